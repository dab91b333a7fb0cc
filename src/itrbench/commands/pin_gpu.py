"""`itrbench pin-gpu --gpus N -- CMD ...`: run CMD on N GPUs that no other pinned job on this machine holds.

Snakemake's `resources: gpu=N` limits how many GPUs jobs use at once but does not say which ones; this picks free
devices (an exclusive file lock per device, held for the life of CMD), sets CUDA_VISIBLE_DEVICES and execs CMD.
Under SLURM a job sees exactly its own GPUs, so nothing needs picking and CMD runs on them as they are.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def visible_devices(ids: str | None) -> list[str]:
    if ids:
        return [i.strip() for i in ids.split(",") if i.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [i.strip() for i in env.split(",") if i.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def lock_dir() -> Path:
    folder = Path(os.environ.get("ITRBENCH_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"itrbench-gpu-locks-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def acquire(devices: list[str], n: int, wait_seconds: float = 2.0) -> tuple[list[str], list[int]]:
    """Lock n free devices (non-blocking tries, retried until enough are free); returns the ids and the lock fds."""
    folder, announced = lock_dir(), False
    while True:
        got, fds = [], []
        for dev in devices:
            fd = os.open(folder / f"gpu{dev}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append(dev)
            fds.append(fd)
            if len(got) == n:
                return got, fds
        for fd in fds:
            os.close(fd)
        if not announced:
            print(f"pin-gpu: waiting for {n} free GPU(s) among {','.join(devices)}", file=sys.stderr)
            announced = True
        time.sleep(wait_seconds)


def run(args) -> int:
    from itrbench.errors import ConfigError

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("pin-gpu: expected a command after --, e.g. itrbench pin-gpu --gpus 1 -- itrbench train ...")
    if args.gpus < 1:
        raise ConfigError(f"--gpus: expected an integer >= 1, got {args.gpus}")
    devices = visible_devices(args.ids)
    if len(devices) < args.gpus:
        raise ConfigError(f"pin-gpu: {args.gpus} GPU(s) requested, {len(devices)} visible ({','.join(devices) or 'none'}); "
                          f"to train without a GPU set `resources: {{train: {{gpus: 0}}}}` in the workflow config "
                          f"(or add --config 'resources={{train: {{gpus: 0}}}}') and keep `run: {{device: auto}}` or cpu")
    if len(devices) == args.gpus:  # the scheduler already gave this job its own devices
        chosen = devices
    else:
        chosen, fds = acquire(devices, args.gpus)
        for fd in fds:
            os.set_inheritable(fd, True)  # the locks live as long as the command does
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    print(f"pin-gpu: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached


def register(sub) -> None:
    import argparse

    p = sub.add_parser("pin-gpu", help="run a command on GPUs no other pinned job holds (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs for the command")
    p.add_argument("--ids", default=None, help="comma-separated device ids to choose from (default: every visible GPU)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    p.set_defaults(func=run)
