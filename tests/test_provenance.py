"""Runs never report a stale model: provenance-keyed resume, untouched folders on refusal, NaN caught early,
text caches keyed by caption content (issue 15)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from itrbench import provenance
from itrbench.cli import main
from itrbench.errors import TrainingError
from itrbench.training import Trainer, text_cache, train_and_evaluate


class Killed(Exception):
    """Stands in for kill -9 in the middle of a run (raised after a checkpoint was written)."""


def count_epochs(monkeypatch, kill_after: int | None = None) -> list[int]:
    """Record the epochs the trainer really trains; optionally 'kill' the run after `kill_after` epochs."""
    trained = []
    original = Trainer.train_epoch

    def spy(self, epoch, log):
        if kill_after is not None and len(trained) == kill_after:
            raise Killed()
        trained.append(epoch)
        return original(self, epoch, log)

    monkeypatch.setattr(Trainer, "train_epoch", spy)
    return trained


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own_data(tiny_toy, tmp_path):
    """A private copy of the tiny toy data set that a test may change."""
    root = tmp_path / "data"
    shutil.copytree(tiny_toy, root)
    return root


# ---- defect 1: what a checkpoint was trained from -------------------------------------------------------------
@pytest.mark.slow
def test_finished_run_trains_again_when_asked(tiny_run_config, tmp_path, monkeypatch):
    """`snakemake --forcerun train` re-runs `itrbench train` on a finished run folder: it must really train."""
    cfg = tiny_run_config(train={"epochs": 1})
    train_and_evaluate(cfg, tmp_path / "run")
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    trained = count_epochs(monkeypatch)
    train_and_evaluate(cfg, tmp_path / "run")
    assert trained == [0]
    again = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert again["run_id"] != first["run_id"]


def test_run_killed_during_evaluation_only_evaluates(tiny_run_config, tmp_path, monkeypatch):
    cfg = tiny_run_config(train={"epochs": 1})
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    (tmp_path / "run" / provenance.EVALUATED).unlink()  # metrics were never recorded as written
    trained = count_epochs(monkeypatch)
    assert train_and_evaluate(cfg, tmp_path / "run")["protocols"] == metrics["protocols"]
    assert trained == []


@pytest.mark.slow
def test_changed_training_data_does_not_resume(tiny_run_config, own_data, tmp_path, monkeypatch, capsys):
    cfg = tiny_run_config(data={"root": str(own_data)}, train={"epochs": 2})
    count_epochs(monkeypatch, kill_after=1)
    with pytest.raises(Killed):
        train_and_evaluate(cfg, tmp_path / "run")
    monkeypatch.undo()
    caps = own_data / "toy-f30k_precomp" / "train_caps.txt"
    lines = caps.read_text().splitlines()
    caps.write_text("\n".join(["a completely different caption"] + lines[1:]) + "\n")  # same count, other text
    trained = count_epochs(monkeypatch)
    train_and_evaluate(cfg, tmp_path / "run")
    assert trained == [0, 1]  # from scratch, not resumed at epoch 2
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "not resuming" in out and "train data train_caps.txt changed (size" in out and "train text cache key" in out


@pytest.mark.slow
def test_changed_code_does_not_resume(tiny_run_config, tmp_path, monkeypatch, capsys):
    cfg = tiny_run_config(train={"epochs": 2})
    count_epochs(monkeypatch, kill_after=1)
    with pytest.raises(Killed):
        train_and_evaluate(cfg, tmp_path / "run")
    monkeypatch.undo()
    monkeypatch.setattr(provenance, "code_version", lambda: "0123456789abcdef")
    trained = count_epochs(monkeypatch)
    train_and_evaluate(cfg, tmp_path / "run")
    assert trained == [0, 1]
    assert "code version" in capsys.readouterr().out


@pytest.mark.slow
def test_unchanged_unfinished_run_resumes(tiny_run_config, tmp_path, monkeypatch):
    cfg = tiny_run_config(train={"epochs": 2})
    full = train_and_evaluate(cfg, tmp_path / "full")["protocols"]
    count_epochs(monkeypatch, kill_after=1)
    with pytest.raises(Killed):
        train_and_evaluate(cfg, tmp_path / "run")
    monkeypatch.undo()
    trained = count_epochs(monkeypatch)
    assert train_and_evaluate(cfg, tmp_path / "run")["protocols"] == full
    assert trained == [1]


def test_file_digest_sees_a_change_in_a_large_file(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "FULL_HASH_BYTES", 4096)  # force the sampled path on a small file
    f = tmp_path / "big.bin"
    data = bytearray(os.urandom(3 * 2**20))
    f.write_bytes(bytes(data))
    before = provenance.file_digest(f)
    data[-10] ^= 0xFF  # the last row of a feature file
    f.write_bytes(bytes(data))
    assert provenance.file_digest(f) != before
    assert provenance.file_digest(f).startswith(f"{3 * 2**20}:")


# ---- defect 2: a refused train writes nothing; evaluate checks the checkpoint ----------------------------------
def test_rejected_train_leaves_run_folder_byte_identical(tiny_run_config, tmp_path, capsys):
    cfg = tiny_run_config(train={"epochs": 1})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run)]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--out", str(run), "--set", "model.embed_dim=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt: trained with a different config" in err[0]
    assert "model.embed_dim: 32 -> 16" in err[0]
    assert snapshot(run) == before


def test_evaluate_refuses_a_checkpoint_of_another_config(tiny_run_config, tmp_path, capsys):
    cfg = tiny_run_config(train={"epochs": 1})
    run = tmp_path / "run"
    train_and_evaluate(cfg, run)
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "embed_dim": 16}}))
    before = snapshot(run)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with a different config than" in err[0] and "model.embed_dim: 32 -> 16" in err[0]
    assert snapshot(run) == before


def test_evaluate_refuses_a_model_of_other_training_data(tiny_run_config, own_data, tmp_path, capsys):
    cfg = tiny_run_config(data={"root": str(own_data)}, train={"epochs": 1})
    run = tmp_path / "run"
    train_and_evaluate(cfg, run)
    ims = own_data / "toy-f30k_precomp" / "train_ims.npy"
    arr = np.load(ims)
    np.save(ims, arr[::-1].copy())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train data train_ims.npy changed (same size, different content)" in err[0]


# ---- defect 3: NaN anywhere, caught before the first step; nothing non-finite saved --------------------------
def test_nan_in_last_training_row_is_caught_before_the_first_step(tiny_run_config, own_data, tmp_path, monkeypatch, capsys):
    import itrbench.data.precomp as precomp

    monkeypatch.setattr(precomp, "_OPEN_CHECK_BYTES", 1)  # open_split scans only the head, as on a real 8 GB file
    ims = own_data / "toy-f30k_precomp" / "train_ims.npy"
    arr = np.load(ims)
    arr[-1, -1, -1] = np.nan
    np.save(ims, arr)
    cfg = tiny_run_config(data={"root": str(own_data)})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trained = count_epochs(monkeypatch)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"itrbench: error: {ims}: image row {len(arr) - 1} holds NaN; expected finite float32 features"]
    assert trained == [] and not (tmp_path / "run").exists()


def test_non_finite_loss_stops_naming_step_and_batch(tiny_run_config, tmp_path, monkeypatch):
    cfg = tiny_run_config(train={"epochs": 2})
    trainer = Trainer(cfg, tmp_path / "run")
    original = trainer.model.training_loss
    calls = []

    def poisoned(batch, epoch):
        calls.append(1)
        loss, parts = original(batch, epoch)
        return (loss * float("nan"), parts) if len(calls) == 3 else (loss, parts)

    monkeypatch.setattr(trainer.model, "training_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3 \(epoch 1, batch 3 of \d+, first caption \d+\)"):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_saved(tiny_run_config, tmp_path):
    trainer = Trainer(tiny_run_config(), tmp_path / "run")
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(TrainingError, match="not written: .* holds NaN/inf after epoch 1"):
        trainer.save_checkpoint(0, 1.0)
    assert not trainer.checkpoint_path.exists()


# ---- defect 4: frozen text cache keyed by caption content and encoder ------------------------------------------
def test_changed_caption_text_rebuilds_the_text_cache(tmp_path):
    cfg = {"text": {"cache_dir": str(tmp_path), "encoder": "minilm", "max_length": 16, "batch_size": 8},
           "data": {"dataset": "toy"}}
    old = SimpleNamespace(split="train", captions=["a red cube on a table", "two dogs play in snow"])
    new = SimpleNamespace(split="train", captions=["a blue sphere under a chair", "a man rides a horse"])
    a = np.array(text_cache(cfg, old)[0])
    assert np.array_equal(np.array(text_cache(cfg, old)[0]), a)  # unchanged captions: reused
    b = np.array(text_cache(cfg, new)[0])
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_stale_temp_of_a_killed_cache_writer_is_removed(tmp_path):
    from itrbench.text import clean_stale_temps

    cache = tmp_path / "train.caps.minilm.L16.npy"
    code = ("import os, sys; from pathlib import Path; from itrbench.text import _locked_atomic\n"
            f"with _locked_atomic(Path({str(cache)!r})) as tmp:\n"
            "    tmp.write_bytes(b'x' * 4096); print(tmp, flush=True); os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9
    stale = Path(out.stdout.strip())
    assert stale.is_file() and stale.name.startswith(f".{cache.name}.")
    live = tmp_path / f".{cache.name}.live.npy"  # a writer still at work holds its lock
    live.write_bytes(b"y")
    import fcntl

    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert clean_stale_temps(cache) == [stale]
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists()


def test_cache_without_key_is_not_trusted(tmp_path):
    from itrbench.text import cache_is_current, key_path

    cfg = {"text": {"cache_dir": str(tmp_path), "encoder": "minilm", "max_length": 16, "batch_size": 8},
           "data": {"dataset": "toy"}}
    split = SimpleNamespace(split="dev", captions=["a cat", "a dog"])
    text_cache(cfg, split)
    path = next(tmp_path.rglob("dev.caps.*.L16.npy"))
    key_path(path).unlink()  # a cache from before keys existed
    from itrbench.text import text_cache_key

    assert not cache_is_current(path, text_cache_key(split.captions, "minilm", 16))
    text_cache(cfg, split)
    assert cache_is_current(path, text_cache_key(split.captions, "minilm", 16))
