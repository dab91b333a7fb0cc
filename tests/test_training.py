"""Trainer end to end on tiny ToyScenes: VSE++ learns, runs are reproducible, a killed run resumes."""
import json
import math

import numpy as np
import pytest
import yaml

from itrbench.cli import main
from itrbench.training import Trainer, lr_at, train_and_evaluate


def chance_rsum(n_images: int, cpi: int = 5) -> float:
    """Expected rsum of random scores: t2i R@K = K/n; i2t R@K = P(one of cpi captions in the top K of n*cpi)."""
    n_caps = n_images * cpi
    t2i = sum(100 * k / n_images for k in (1, 5, 10))
    i2t = sum(100 * (1 - math.comb(n_caps - cpi, k) / math.comb(n_caps, k)) for k in (1, 5, 10))
    return t2i + i2t


@pytest.mark.slow
def test_vsepp_trains_and_reports(tiny_run_config, tmp_path):
    cfg = tiny_run_config(train={"epochs": 4})
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    m = metrics["protocols"]["f30k_1k"]
    assert m["rsum"] > 1.6 * chance_rsum(40), m  # 80 training images and 2 epochs... 4: learning, not yet skill
    assert m["rsum"] == pytest.approx(sum(m[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("protocols", "pairs_per_second", "similarity_seconds", "train_wall_seconds", "versions",
                "git_commit", "device", "config_hash", "seed"):
        assert key in saved
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    means = [row["epoch_mean"]["loss"] for row in log if "epoch_mean" in row]
    assert len(means) == 4 and means[-1] < means[0]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == cfg


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_run_config, tmp_path):
    cfg = tiny_run_config(train={"epochs": 1})
    a = train_and_evaluate(cfg, tmp_path / "a")["protocols"]
    b = train_and_evaluate(cfg, tmp_path / "b")["protocols"]
    assert a == b
    c = train_and_evaluate({**cfg, "seed": 1}, tmp_path / "c")["protocols"]
    assert c != a


@pytest.mark.slow
def test_killed_run_resumes(tiny_run_config, tmp_path):
    """Train 3 epochs straight vs. 2 epochs, 'crash', then resume to 3: identical weights and metrics."""
    cfg = tiny_run_config(train={"epochs": 3})
    full = train_and_evaluate(cfg, tmp_path / "full")
    partial = Trainer({**cfg, "train": {**cfg["train"], "epochs": 2}}, tmp_path / "resumed")
    partial.train()
    # the checkpoint was written under a 2-epoch config; a 3-epoch run must refuse it, so rewrite its hash
    import torch

    from itrbench.config import config_hash

    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    state["config_hash"] = config_hash(cfg, ())
    torch.save(state, tmp_path / "resumed" / "checkpoint.pt")
    resumed = train_and_evaluate(cfg, tmp_path / "resumed")
    assert resumed["protocols"] == full["protocols"]


def test_lr_schedule():
    cfg = {"train": {"lr": 1.0, "lr_decay": 0.1, "lr_decay_epochs": [2, 4]}}
    assert [lr_at(cfg, e) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cli_train_then_evaluate(tiny_run_config, tmp_path):
    cfg = tiny_run_config(train={"epochs": 1})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())["protocols"]
    assert main(["evaluate", "--run", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["protocols"] == first


def test_nan_features_fail_cleanly(tiny_run_config, tmp_path, capsys):
    """A NaN in the eval features: one error line naming the file, no run folder left."""
    import shutil

    src = tiny_run_config()["data"]["root"]
    root = tmp_path / "data"
    shutil.copytree(src, root)
    ims = root / "toy-f30k_precomp" / "test_ims.npy"
    arr = np.load(ims)
    arr[0, 0, 0] = np.nan
    np.save(ims, arr)
    cfg = tiny_run_config(data={"root": str(root)})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_ims.npy" in err[0]
    assert not (tmp_path / "run").exists()


def test_trainer_and_kmeans_threads_come_from_one_affinity_helper(monkeypatch):
    """set_threads: the config's `threads`, else every core of the CPU affinity (not capped); PGC's k-means: torch's
    setting capped by that affinity. Both count cores through utils.cpu_threads."""
    import os

    import torch

    from itrbench.methods.coder.pgc import job_threads
    from itrbench.training import set_threads
    from itrbench.utils import cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})  # the job was given 3 of the machine's cores
    assert cpu_threads() == cpu_threads(None) == cpu_threads(0) == 3
    assert cpu_threads(8) == 8 and cpu_threads(8, cap=True) == 3 and cpu_threads(2, cap=True) == 2
    before = torch.get_num_threads()
    try:
        assert set_threads({"threads": None}) == 3 and torch.get_num_threads() == 3
        assert set_threads({"threads": 5}) == 5 and torch.get_num_threads() == 5  # asked for: not capped
        assert job_threads() == 3  # torch's 5, capped by the affinity
        torch.set_num_threads(2)
        assert job_threads() == 2
    finally:
        set_threads({"threads": before})  # torch's and faiss's setting as the suite had them
