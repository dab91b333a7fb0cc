"""A real SLURM: one toy training run (with its data, text caches and evaluation) through workflow/profiles/slurm.

CI brings up a single-node SLURM with accounting first (`.ci/slurm-up.sh`: munge, MariaDB, slurmdbd, slurmctld,
slurmd); without `sinfo` on PATH the test skips. The config asks for a GPU per training job, as paper.yaml does, and
the CPU overlay workflow/config/cpu.yaml takes the request away: the CI node has no GPUs (no GRES), so a job still
asking for one would be refused by sbatch.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "workflow" / "config"
BIN = Path(sys.executable).parent
TARGET = "results/toy-f30k/vsepp/vsepp/baseline/seed0/run.json"  # data, 3 text caches, train + evaluation, record

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="no SLURM here (`sinfo` not on PATH); as root, .ci/slurm-up.sh starts a single-node one"),
]


def test_tiny_run_through_the_slurm_profile_with_the_cpu_overlay(tmp_path, capsys):
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %T"], capture_output=True, text=True, timeout=30)
    assert sinfo.returncode == 0 and sinfo.stdout.strip(), f"SLURM not answering: {sinfo.stderr.strip()}"
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    config["resources"]["train"]["gpus"] = 1  # as on a GPU cluster; cpu.yaml must undo it
    # the training job asks its (method, data set) entry of the table: sbatch --time 7 --mem 1800
    config["resources"]["train_cost"] = {TARGET.split("/")[2]: {"f30k": {"runtime": 7, "mem_mb": 1800}}}
    gpu_config = tmp_path / "tiny-gpu.yaml"
    gpu_config.write_text(yaml.safe_dump(config))
    wd = tmp_path / "wd"
    wd.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO / "src")}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--profile", str(REPO / "workflow/profiles/slurm"),
           TARGET, "--configfile", str(gpu_config), str(CONFIGS / "cpu.yaml"), "--show-failed-logs"]
    run = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]

    ids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,State,ExitCode,Elapsed,ReqTRES,Timelimit"],
                           capture_output=True, text=True, timeout=60)
    assert sacct.returncode == 0, sacct.stderr
    with capsys.disabled():  # the states reach the CI log even when the test passes
        print("\nsacct (JobID|State|ExitCode|Elapsed|ReqTRES|Timelimit):\n" + sacct.stdout, flush=True)
    rows = [line.split("|") for line in sacct.stdout.strip().splitlines()]
    assert len(ids) == 5 and sorted(r[0] for r in rows) == sorted(ids), (ids, sacct.stdout)  # toy_data, cache_text x3, train
    assert all(r[1] == "COMPLETED" and r[2] == "0:0" for r in rows), sacct.stdout
    assert not any("gpu" in r[4] for r in rows), sacct.stdout

    record = yaml.safe_load((wd / TARGET).read_text())
    metrics = json.loads((wd / record["run_dir"] / "metrics.json").read_text())  # trained, then evaluated
    assert "f30k_1k" in metrics["protocols"] and metrics["device"].startswith("cpu"), metrics["device"]
    # the profile keeps successful jobs' SLURM logs (the plugin deletes them by default)
    train_logs = list((wd / "logs" / "slurm" / "rule_train").rglob("*.log"))
    assert len(train_logs) == 1 and "Finished jobid" in train_logs[0].read_text(), train_logs
    train = next(r for r in rows if r[0] == train_logs[0].stem)  # logs/slurm/rule_train/<wildcards>/<jobid>.log
    assert "mem=1800M" in train[4] and train[5] == "00:07:00", train
