#!/usr/bin/env bash
# A single-node SLURM with accounting on this machine, for tests/test_slurm.py: munge, MariaDB, slurmdbd,
# slurmctld and slurmd from Debian packages, each started by hand (no systemd) and stopped by the PID it wrote.
#
#   .ci/slurm-up.sh          install (first time), configure, start; returns once `sinfo` shows the node idle
#   .ci/slurm-up.sh stop     stop the daemons it started, newest first, by PID
#
# Idempotent: a node already up returns at once; a daemon whose PID file names a live process is not restarted.
# Without root or apt-get it says so in one line and exits 0 (tests/test_slurm.py then skips: no `sinfo`).
# It writes /etc/slurm/{slurm,slurmdbd}.conf (the client commands read them there); state, logs and PID files go
# to $ITRBENCH_SLURM_STATE (default /var/lib/itrbench-slurm). Jobs run as the submitting user (root in CI).
set -euo pipefail

STATE=${ITRBENCH_SLURM_STATE:-/var/lib/itrbench-slurm}
CLUSTER=itrbench
HOST=$(hostname -s)
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

say() { echo "slurm-up: $*"; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    # slurmd first (it reports to slurmctld), the databases last; each by the PID file it wrote.
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/slurmdbd.pid" "$STATE/mysql/mariadbd.pid" \
                   /run/munge/munged.pid; do
        if alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && { say "$pidfile: PID $pid still running after 10 s, sending KILL"; kill -9 "$pid"; }
            say "stopped $(basename "$pidfile" .pid) (PID $pid)"
        fi
    done
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until the command succeeds
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "$what did not come up within ${seconds} s"; return 1
}

node_ready() { [[ $(sinfo -h -n "$HOST" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated) ]]; }

if [[ ${1:-} == stop ]]; then stop; exit 0; fi
if [[ -n ${1:-} ]]; then echo "usage: $0 [stop]" >&2; exit 2; fi

if command -v sinfo >/dev/null && node_ready; then say "node $HOST already up"; exit 0; fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    say "needs root and apt-get to install SLURM; not started (tests/test_slurm.py will skip)"; exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >/tmp/slurm-up-apt.log 2>&1 ||
        { tail -20 /tmp/slurm-up-apt.log; say "apt-get failed (log: /tmp/slurm-up-apt.log)"; exit 1; }
fi

mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$STATE/mysql" /etc/slurm /run/munge /run/mysqld
chown munge:munge /run/munge && chmod 755 /run/munge
chown mysql:mysql /run/mysqld "$STATE/mysql"

# --- munge (the packages' post-install made a key; a bare image may not have)
[[ -s /etc/munge/munge.key ]] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
# (a munged or MariaDB that a package's post-install script already started, where invoke-rc.d may, is kept)
if ! alive /run/munge/munged.pid && ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged bash -c 'munge -n | unmunge'
fi

# --- MariaDB: slurmdbd connects as root over the socket (Debian's root@localhost authenticates by unix_socket)
if ! alive "$STATE/mysql/mariadbd.pid" && ! mariadb-admin ping >/dev/null 2>&1; then
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$STATE/mysql/mariadbd.pid" --skip-networking \
        --log-error="$STATE/mysql/mariadbd.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mariadb-admin ping || { tail -5 "$STATE/mysql/mariadbd.log"; exit 1; }
fi

# --- configuration: this host's CPUs and memory as slurmd itself detects them
node=$(slurmd -C | head -1)
[[ $node == NodeName=* ]] || { say "slurmd -C gave no node line: $node"; exit 1; }
cat >/etc/slurm/slurmdbd.conf <<EOF
# written by .ci/slurm-up.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
EOF
chmod 600 /etc/slurm/slurmdbd.conf
cat >/etc/slurm/slurm.conf <<EOF
# written by .ci/slurm-up.sh: one node, no GPUs (GresTypes unset), no cgroups (linuxproc tracking)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# --- daemons (each forks into the background and writes its PID file)
if ! alive "$STATE/slurmdbd.pid"; then
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
fi
sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
alive "$STATE/slurmctld.pid" || slurmctld
wait_for 30 slurmctld scontrol ping
alive "$STATE/slurmd.pid" || slurmd -N "$HOST"
if ! wait_for 60 "node $HOST" node_ready; then
    sinfo -N -l || true; tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" || true; exit 1
fi
say "node $HOST idle: $(sinfo -h -N -o '%N %c CPUs %m MB %T')"
