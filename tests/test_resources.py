"""Training jobs' runtime and memory: per (method, data set) from `resources.train_cost`, scaled by the attempt.

The workflow runs for real on the tiny config with a stand-in `itrbench` (test_pipeline's, instant) whose first
`train` of every run fails, as a job killed at its time limit would; `--retries 1` submits it again. Snakemake
prints each submitted job with its resources, so both attempts of every training job are read from its output.
"""
import re
import sys

import pytest
import yaml

from itrbench.experiments import plan as reg
from test_pipeline import CONFIGS, SCHEMA, _fake_env, jobs_of, snakemake

FAIL_FIRST_TRAIN = '''#!{python}
"""`itrbench train` fails once per run folder (a job killed at its limit), then the instant stand-in runs."""
import os, sys
from pathlib import Path
argv = sys.argv[1:]
if argv[0] == "train":
    out = Path(argv[argv.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "attempt1").exists():
        (out / "attempt1").write_text("killed")
        sys.exit("itrbench: error: stand-in killed at its time limit")
os.execv(sys.executable, [sys.executable, {fake!r}, *argv])
'''


def _resources(block: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))


@pytest.mark.slow  # ~80 s on 2 busy cores: 8 trainings twice, through the tables
def test_train_runtime_and_memory_per_method_and_dataset_scale_with_attempt(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    plan = reg.plan_runs(reg.load_workflow_config(CONFIGS / "tiny.yaml", SCHEMA),
                         reg.load_registry(CONFIGS.parents[1] / "workflow" / "experiments.yaml"))
    first, second = sorted({r.method for r in plan.runs})[:2]  # method names are config data: take the plan's
    base = cfg["resources"]["train"]
    # first method: both keys on f30k, runtime only on coco; second: memory only on coco; the rest: resources.train
    table = {first: {"f30k": {"runtime": 7, "mem_mb": 1500}, "coco": {"runtime": 9}}, second: {"coco": {"mem_mb": 2500}}}
    cfg["resources"]["train_cost"] = table
    cfg_path = tmp_path / "costs.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    env, _ = _fake_env(tmp_path)
    stand_in = tmp_path / "bin" / "itrbench"
    ok = tmp_path / "bin" / "itrbench-ok"
    stand_in.rename(ok)
    stand_in.write_text(FAIL_FIRST_TRAIN.format(python=sys.executable, fake=str(ok)))
    stand_in.chmod(0o755)
    rc, out = snakemake("--configfile", str(cfg_path), "--cores", "2", "--retries", "1", "tables",
                        "--directory", str(tmp_path / "wd"), env=env)
    assert rc == 0, out[-6000:]

    seen: dict[str, list[dict]] = {}
    for block in jobs_of(out, "train"):
        seen.setdefault(re.search(r"hash=(\w+)", block).group(1), []).append(_resources(block))
    runs = {r.hash: r for r in plan.runs}
    assert set(seen) == set(runs) and len(runs) == 8, sorted(seen)
    for h, attempts in seen.items():
        run = runs[h]
        entry = table.get(run.method, {}).get(run.dataset_key, {})
        want = {key: entry.get(key, base[key]) for key in ("runtime", "mem_mb")}
        assert len(attempts) == 2, (run.method, run.dataset_key, attempts)
        for attempt, res in enumerate(attempts, start=1):
            assert int(res["runtime"]) == attempt * want["runtime"], (run.method, run.dataset_key, attempt, res)
            assert int(res["mem_mb"]) == attempt * want["mem_mb"], (run.method, run.dataset_key, attempt, res)
    # the table really made jobs differ: per method on one data set, and per data set for one method
    by = {(r.method, r.dataset_key): [int(a["runtime"]) for a in seen[r.hash]] for r in plan.runs}
    assert by[(first, "f30k")] == [7, 14] and by[(first, "coco")] == [9, 18]
    assert by[(second, "f30k")] == [base["runtime"], 2 * base["runtime"]]
    assert list((tmp_path / "wd" / "results" / "tiny" / "tables").glob("*.md"))  # the run went through the tables


@pytest.mark.slow
def test_train_cost_of_an_unknown_method_is_one_clear_line(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["resources"]["train_cost"] = {"nosuchmethod": {"f30k": {"runtime": 5}}}
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    rc, out = snakemake("--configfile", str(cfg_path), "-n", "--directory", str(tmp_path / "wd"))
    assert rc != 0
    assert f"{cfg_path}: unknown key 'resources.train_cost.nosuchmethod'; expected a method:" in out
