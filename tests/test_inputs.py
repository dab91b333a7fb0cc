"""Config inputs that used to be silent no-ops or wrong-typed (issue 15): globs matching nothing, `1e-3`,
`--config seeds=[0,1]`, validate-data's splits, pin-gpu on CPU, errors on the console, `--forcerun train`."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from itrbench.cli import main
from itrbench.config import check_globs, load_config
from itrbench.errors import ConfigError
from test_pipeline import BIN, CONFIGS, expected_trainings, job_counts, snakemake


def test_lr_written_as_in_papers_is_a_number(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 1e-3, lr_decay_epochs: [15], grad_clip: 2e0}\nseed: 3\n")
    cfg = load_config(path)
    assert cfg["train"]["lr"] == 0.001 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["grad_clip"] == 2.0
    path.write_text("train: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'train.lr' must be of type number, got 'fast'"):
        load_config(path)
    path.write_text("data: {dataset: '1e3'}\n")  # a string where a string is expected stays one
    assert load_config(path)["data"]["dataset"] == "1e3"


def test_globs_that_match_nothing_are_errors():
    names = ["vsepp/baseline", "coder/table1/coder", "ascl/table1/ascl"]
    check_globs(["coder/*", "vsepp/baseline"], names, "only", "experiment", "cfg.yaml")
    with pytest.raises(ConfigError, match=r"^cfg.yaml: only: 'coder/tabel1/coder' matches no experiment "
                                          r"\(did you mean 'coder/table1/coder'\?\)$"):
        check_globs(["coder/*", "coder/tabel1/coder"], names, "only", "experiment", "cfg.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'ascl/\*'"):
        check_globs(["acsl/*"], names, "only", "experiment", "cfg.yaml")


@pytest.mark.slow
def test_misspelt_only_entry_stops_the_workflow_before_any_job(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["only"] = ["vsepp/baseline", "coder/tabel1/coder"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "wd"
    rc, out = snakemake("--configfile", str(path), "--cores", "1", "tables", "--directory", str(wd))
    assert rc != 0
    assert (f"{path}: only: 'coder/tabel1/coder' matches no experiment in workflow/experiments.yaml "
            f"(did you mean 'coder/table1/coder'?)") in out
    assert not (wd / "results").exists() and not (wd / "data").exists()
    rc, out = snakemake("--configfile", str(CONFIGS / "tiny.yaml"), "--config", "skip=[coco:acsl/*]", "-n", "tables",
                        "--directory", str(wd))
    assert rc != 0 and "skip: 'coco:acsl/*' matches no '<dataset>:<experiment>' of this config (did you mean 'coco:ascl/*'?)" in out


@pytest.mark.slow
def test_config_overrides_on_the_command_line_are_typed(tmp_path):
    rc, out = snakemake("--configfile", str(CONFIGS / "tiny.yaml"), "--config", "seeds=[0,1]",
                        "methods={vsepp: {train: {lr: 1e-3}}}", "resources={train: {gpus: 0}}",
                        "-n", "tables", "--directory", str(tmp_path))
    assert rc == 0, out[-3000:]
    # `seeds=[0,1]` read as a list of numbers: both seeds train (the typed override changes no config hash)
    assert job_counts(out)["train"] == len(expected_trainings(CONFIGS / "tiny.yaml", seeds=[0, 1]))


def test_validate_data_checks_every_split_the_config_names(tiny_toy, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(tiny_toy), "dataset": "toy-f30k", "eval_split": "testall"}}))
    assert main(["validate-data", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"itrbench: error: {tiny_toy / 'toy-f30k_precomp' / 'testall_ims.npy'}: file not found"]
    # without --splits or --config: the present splits, and train + test must be among them
    (tmp_path / "toy-f30k_precomp").mkdir()
    for kind in ("ims.npy", "caps.txt"):
        (tmp_path / "toy-f30k_precomp" / f"train_{kind}").write_bytes((tiny_toy / "toy-f30k_precomp" / f"train_{kind}").read_bytes())
    assert main(["validate-data", "--root", str(tmp_path), "--dataset", "toy-f30k", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith("test_ims.npy: file not found")
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"datasets": {"f30k": {"name": "toy-f30k", "root": str(tiny_toy), "eval_split": "test"}}}))
    assert main(["validate-data", "--config", str(wf), "--dataset", "toy-f30k", "--quiet"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["toy-f30k/train", "toy-f30k/test"]


def test_pin_gpu_without_gpus_says_how_to_run_on_cpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "itrbench.cli", "pin-gpu", "--gpus", "1", "--", "true"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 GPU(s) requested, 0 visible (none)" in lines[0]
    assert "resources: {train: {gpus: 0}}" in lines[0]


FAILING_ITRBENCH = '''#!{python}
import sys
print("progress 50%")
print("itrbench: error: data/toy/toy-f30k_precomp/train_ims.npy: image row 7 holds NaN", file=sys.stderr)
sys.exit(2)
'''


@pytest.mark.slow
def test_failed_rule_prints_its_one_line_error_on_the_console(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "itrbench"
    fake.write_text(FAILING_ITRBENCH.format(python=sys.executable))
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    rc, out = snakemake("--configfile", str(CONFIGS / "tiny.yaml"), "--cores", "1", "tables",
                        "--directory", str(tmp_path / "wd"), env=env)
    assert rc != 0
    # whichever job ran first failed; its reason is on the console, under the rule's name and log file
    assert re.search(r"^rule \w+ failed \(results/logs/\S+\.log\): itrbench: error: "
                     r"data/toy/toy-f30k_precomp/train_ims.npy: image row 7 holds NaN$", out, re.M), out[-3000:]


@pytest.mark.slow
def test_forcerun_train_really_retrains(tmp_path):
    """The pipeline's `itrbench train` on a finished run folder trains again (it used to re-evaluate old weights)."""
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    cfg["only"] = ["vsepp/baseline"]
    del cfg["datasets"]["coco"]
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "wd"
    args = ("--configfile", str(path), "--cores", "1", "tables", "--directory", str(wd))
    rc, out = snakemake(*args, env={"HF_HUB_OFFLINE": "1"})
    assert rc == 0, out[-4000:]
    (run,) = [p.parent for p in (wd / "results" / "runs").glob("*/seed0/metrics.json")]
    first = torch.load(run / "checkpoint.pt", weights_only=False)["run_id"]
    rc, out = snakemake(*args, "--forcerun", "train", env={"HF_HUB_OFFLINE": "1"})
    assert rc == 0, out[-4000:]
    assert "epoch 1:" in (run / "train.log").read_text()  # an epoch really ran
    second = torch.load(run / "checkpoint.pt", weights_only=False)["run_id"]
    assert second != first and json.loads((run / "provenance.json").read_text())["run_id"] == second
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["protocols"]["f30k_1k"]["rsum"])
