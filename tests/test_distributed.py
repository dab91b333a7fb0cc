"""Data parallel training: 2 gloo processes reproduce a single-process run over the same global batch."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from itrbench import distributed
from itrbench.distributed import ShardedBatchSampler


def test_sharded_batches_concatenate_to_the_single_process_batches():
    order = np.random.default_rng(0).permutation(23)
    single = list(ShardedBatchSampler(order, 6, rank=0, world_size=1, drop_last=True))
    ranks = [list(ShardedBatchSampler(order, 6, rank=r, world_size=3, drop_last=True)) for r in range(3)]
    assert len(single) == 3 and all(len(r) == 3 for r in ranks)
    for i, batch in enumerate(single):
        assert sum((ranks[r][i] for r in range(3)), []) == batch == order[6 * i:6 * i + 6].tolist()
    # no drop_last: the last global batch wraps around so both ranks get equal shares
    last = [list(ShardedBatchSampler(order, 6, rank=r, world_size=2, drop_last=False))[-1] for r in range(2)]
    assert last[0] + last[1] == order[18:].tolist() + order[:1].tolist()
    with pytest.raises(Exception, match="train.batch_size: 6 is not divisible"):
        ShardedBatchSampler(order, 6, rank=0, world_size=4, drop_last=True)


def test_helpers_are_identities_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x and distributed.all_gather_cat(x) is x
    assert distributed.world() == distributed.World() and not distributed.active()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_worker(rank: int, world_size: int, port: int, cfg: dict, out: str) -> None:
    """One rank: the gradient of the first global batch, then a one-step Trainer run (loss log + queue)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    from pathlib import Path

    from itrbench.training import Trainer, to_device

    out = Path(out)
    trainer = Trainer(cfg, out / "run")
    tr = cfg["train"]
    if world_size > 1:
        loader = distributed.make_sharded_loader(trainer.dataset, tr["batch_size"], seed=cfg["seed"], epoch=0,
                                                 world=trainer.world, drop_last=True)
    else:
        from itrbench.data.dataset import make_loader

        loader = make_loader(trainer.dataset, tr["batch_size"], shuffle=True, seed=cfg["seed"], drop_last=True)
    model = trainer.model.train()
    batch = to_device(next(iter(loader)), trainer.device)
    model.before_step()
    loss, _ = model.training_loss(batch, 0)
    loss.backward()
    distributed.average_gradients(model.parameters())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    del trainer, model  # the real run below starts from a fresh trainer
    trainer = Trainer(cfg, out / "train")
    trainer.train()
    torch.save({"loss": float(loss.detach()), "grads": grads}, out / f"rank{rank}.pt")
    distributed.cleanup()


def _run(world_size: int, cfg: dict, out) -> dict:
    out.mkdir(parents=True)
    if world_size == 1:
        _step_worker(0, 1, 0, cfg, str(out))
    else:
        mp.spawn(_step_worker, args=(world_size, _free_port(), cfg, str(out)), nprocs=world_size, join=True)
    res = torch.load(out / "rank0.pt", weights_only=False)
    res["log"] = [json.loads(x) for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    res["state"] = torch.load(out / "train" / "checkpoint.pt", weights_only=False)
    return res


def _coder_config(tiny_run_config, concept_dir, **train):
    return tiny_run_config(method="coder", threads=1,
                           data={"max_train_images": 8},
                           train={"epochs": 1, "batch_size": 40, "lr": 2e-3, "log_every": 1, **train},
                           coder={"concept_dir": concept_dir, "num_concepts": 6, "queue_size": 64, "pgc_k": 4})


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    from itrbench.methods.coder.concepts import Concepts, concept_adjacency, save_concepts

    rng = np.random.default_rng(0)
    cooc = rng.integers(0, 4, size=(6, 6))
    cooc = np.triu(cooc, 1) + np.triu(cooc, 1).T
    freq = cooc.sum(1) + 1
    out = tmp_path_factory.mktemp("concepts") / "c"
    save_concepts(Concepts([f"w{i}" for i in range(6)], cooc, freq, concept_adjacency(cooc, freq),
                           rng.normal(size=(6, 7)).astype(np.float32), {}), out)
    return str(out)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_over_the_global_batch(tiny_run_config, concept_dir, tmp_path):
    """CODER (M-DCL queues, concepts, PGC): 8 images x 5 captions = one global batch of 40, 20 per rank."""
    cfg = _coder_config(tiny_run_config, concept_dir)
    one, two = _run(1, cfg, tmp_path / "one"), _run(2, cfg, tmp_path / "two")
    # step 1: the loss of the whole global batch, and its gradient (rank-local shares averaged)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 10
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    steps = lambda r: [x for x in r["log"] if "loss" in x]  # noqa: E731
    assert len(steps(one)) == len(steps(two)) == 1
    assert steps(two)[0]["loss"] == pytest.approx(steps(one)[0]["loss"], abs=1e-5)
    # the queue holds the momentum keys of all 40 pairs, in the single-process order
    q1, q2 = one["state"]["extra"]["queue"], two["state"]["extra"]["queue"]
    assert q1["count"] == q2["count"] == 40 and q1["ptr"] == q2["ptr"]
    torch.testing.assert_close(q2["image"], q1["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(q2["text"], q1["text"], atol=1e-5, rtol=0)
    assert torch.equal(q2["image_id"], q1["image_id"])
    # PGC clustered the features of every rank's pairs: all 40 captions are labelled
    assert (two["state"]["extra"]["pgc"]["labels"][:40] >= 0).all()
    assert (two["state"]["extra"]["pgc"]["labels"] >= 0).sum() == 40


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_torchrun_two_processes_train_evaluate_and_resume_on_one(tiny_run_config, concept_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m itrbench.cli train` completes and evaluates; a 3rd epoch resumes on 1 process."""
    cfg = tiny_run_config(method="coder", threads=1, train={"epochs": 2, "batch_size": 32, "lr": 2e-3},
                          coder={"concept_dir": concept_dir, "num_concepts": 6, "queue_size": 64, "pgc_k": 8})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "itrbench.cli", "train",
           "--config", str(path), "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["protocols"]["f30k_1k"]["rsum"] > 100  # chance ~78 on 40 test images
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log if "epoch_mean" in x] == [0, 1]
    # resume on another world size (the checkpoint holds only global state): pretend the job died after
    # epoch 1 and finish it in one process
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    state["epoch"], state["step"] = 0, state["step"] // 2
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    from itrbench.provenance import EVALUATED
    from itrbench.training import train_and_evaluate

    (tmp_path / "run" / EVALUATED).unlink()  # the job 'died' before evaluating

    resumed = train_and_evaluate(cfg, tmp_path / "run")
    assert resumed["protocols"]["f30k_1k"]["rsum"] > 100
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log if "epoch_mean" in x] == [0, 1, 1]
