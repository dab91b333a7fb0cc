"""Generic trainer: one loop for every method; methods plug in through the RetrievalModel hooks.

A run folder holds config.yaml (resolved), train_log.jsonl, checkpoint.pt (latest epoch, written atomically),
metrics.json and provenance.json. A killed run resumes from its checkpoint when started again with the same config,
data, text caches and code (itrbench.provenance); nothing in the folder changes before that decision is made.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from itrbench import distributed
from itrbench.config import config_hash, dump_yaml
from itrbench.convergence import DevProbe, metrics_entry
from itrbench.data.dataset import CaptionDataset, make_loader
from itrbench.data.precomp import open_split
from itrbench import provenance
from itrbench.errors import ConfigError, TrainingError
from itrbench.evaluation import to_device
from itrbench.models.base import ModelContext, build_model
from itrbench.text import (TextEncoder, cache_is_current, cache_token_features, clean_stale_temps, load_token_cache,
                           text_cache_key, token_cache_path)
from itrbench.utils import (atomic_path, cpu_threads, git_commit, package_versions, resolve_device, seed_everything,
                            write_json)


def set_threads(config: dict) -> int:
    n = cpu_threads(config.get("threads"))
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    return n


@dataclass
class RunData:
    """Everything a run reads from disk: splits, text caches, and the model's view of them."""

    train_split: object
    eval_split: object
    train_cache: tuple | None
    eval_cache: tuple | None
    text_encoder: object
    context: ModelContext
    text_keys: dict = field(default_factory=dict)  # split role -> key of the frozen token cache it read


def text_cache(config: dict, split, tag: str = "caps", captions: list[str] | None = None, device="cpu"):
    """Memory-mapped frozen token features of a split (built on first use; the pipeline builds them ahead)."""
    t, d = config["text"], config["data"]
    captions = split.captions if captions is None else captions
    path = token_cache_path(t["cache_dir"], d["dataset"], split.split, t["encoder"], t["max_length"], tag)
    clean_stale_temps(path)
    # keyed by the caption texts and the encoder: a file for this split with other captions is rebuilt, not reused
    if not cache_is_current(path, text_cache_key(captions, t["encoder"], t["max_length"])):
        encoder = TextEncoder(t["encoder"], t["max_length"], trainable=False)
        cache_token_features(captions, encoder, path, t["batch_size"], device=device)
    return load_token_cache(path, len(captions))


def prepare(config: dict, work_dir: Path, device, need_train: bool = True) -> RunData:
    d, t = config["data"], config["text"]
    train_split = open_split(d["root"], d["dataset"], d["train_split"])
    eval_split = open_split(d["root"], d["dataset"], d["eval_split"])
    frozen = t["mode"] == "frozen"
    encoder = None if frozen else TextEncoder(t["encoder"], t["max_length"], trainable=True)
    train_cache = text_cache(config, train_split, device=device) if frozen and need_train else None
    eval_cache = text_cache(config, eval_split, device=device) if frozen else None
    text_dim = (train_cache or eval_cache)[0].shape[-1] if frozen else encoder.hidden_size
    global_feats = train_split.global_feats
    context = ModelContext(
        image_dim=train_split.images.shape[-1],
        text_dim=int(text_dim),
        global_dim=None if global_feats is None else int(global_feats.shape[-1]),
        text_encoder=encoder,
        train_split=train_split,
        n_train_captions=len(CaptionDataset(train_split, max_images=d["max_train_images"])),
        work_dir=work_dir,
        device=device,
        token_cache_factory=(lambda tag, caps: text_cache(config, train_split, tag, caps, device)) if frozen else None,
    )
    keys = {}
    if frozen:
        for role, split in (("train", train_split), ("eval", eval_split)):
            if role == "eval" or need_train:
                keys[role] = text_cache_key(split.captions, t["encoder"], t["max_length"])
    return RunData(train_split, eval_split, train_cache, eval_cache, encoder, context, keys)


def check_features(config: dict, data: RunData) -> None:
    """Scan every feature row a run reads for NaN/inf (streamed, memory-mapped): fail before the first step.

    `open_split` checks only the head of each file; a NaN further in would train a NaN model for days.
    """
    d = config["data"]
    data.train_split.check_values(max_images=d["max_train_images"])
    data.eval_split.check_values(max_images=d["max_eval_images"])


def dev_probe(config: dict, device) -> DevProbe | None:
    """The per-epoch dev evaluation behind the convergence flag (itrbench.convergence); None without a dev split."""
    d = config["data"]
    if d["dev_split"] is None:
        return None
    split = open_split(d["root"], d["dataset"], d["dev_split"])
    cache = text_cache(config, split, device=device) if config["text"]["mode"] == "frozen" else None
    return DevProbe(config, split, cache, device)


def lr_at(config: dict, epoch: int) -> float:
    tr = config["train"]
    return tr["lr"] * tr["lr_decay"] ** sum(epoch >= e for e in tr["lr_decay_epochs"])


class Trainer:
    def __init__(self, config: dict, out_dir: str | Path):
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(config["device"])
        if config["device"] == "cuda" and self.device.type != "cuda":
            raise ConfigError("device: 'cuda' requested but no CUDA device is visible")
        self.world, self.device = distributed.setup(self.device)  # torchrun: one rank per process
        self.threads = set_threads(config)
        seed_everything(config["seed"])
        with distributed.main_first():  # rank 0 builds shared caches and concept files, the others reuse them
            self.data = prepare(config, self.out_dir, self.device)
            check_features(config, self.data)
            self.provenance = provenance.record(config, self.data.train_split, self.data.eval_split, self.data.text_keys)
            self.run_id = uuid.uuid4().hex
            self.dev = dev_probe(config, self.device)
            self.model = build_model(config, self.data.context).to(self.device)
        distributed.broadcast_module(self.model)
        self.optimizer = torch.optim.Adam(self.model.param_groups(config["train"]["lr"], config["train"]["text_lr_scale"]))
        self.dataset = CaptionDataset(self.data.train_split, self.data.train_cache, max_images=config["data"]["max_train_images"])
        self.out_dir.mkdir(parents=True, exist_ok=True)  # only once every input opened cleanly
        self.autocast = self.device.type == "cuda" and config["train"]["bf16"]
        self.start_epoch, self.wall_before = 0, 0.0
        self.step = 0

    # ---- checkpoints ----
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self, epoch: int, wall: float) -> None:
        if not self.world.is_main:  # the state is identical on every rank
            return
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise TrainingError(f"{self.checkpoint_path}: not written: {name} holds NaN/inf after epoch {epoch + 1}")
        state = {
            "epoch": epoch, "step": self.step, "wall_seconds": wall, "config_hash": config_hash(self.config, ()),
            "epochs": self.config["train"]["epochs"], "run_id": self.run_id, "provenance": self.provenance,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "extra": self.model.extra_state(), "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def resumable_state(self) -> dict | None:
        """The checkpoint to resume from, or None to train from scratch; writes nothing, raises on another config.

        Resume only an unfinished run whose recorded inputs all match; a finished run (metrics written from this
        very checkpoint) asked to train again trains afresh; a checkpoint of another config is refused.
        """
        if not self.checkpoint_path.is_file():
            return None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        old = state.get("provenance")
        if state.get("config_hash") != self.provenance["config_hash"]:
            raise ConfigError(f"{self.checkpoint_path}: trained with a different config "
                              f"({provenance.config_changes((old or {}).get('config'), self.config)}); "
                              f"use another --out folder, or delete this one to retrain")
        changes = provenance.input_changes(old, self.provenance)
        if changes:
            tqdm.write(f"{self.checkpoint_path}: not resuming, trained from other inputs: {'; '.join(changes)}; training from scratch")
            return None
        if provenance.was_evaluated(self.out_dir, state.get("run_id")):
            tqdm.write(f"{self.checkpoint_path}: run already finished and evaluated; training again from scratch")
            return None
        return state

    def try_resume(self) -> bool:
        state = self.resumable_state()
        if state is None:
            return False
        self.run_id = state["run_id"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.model.load_extra_state(state["extra"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.start_epoch, self.step, self.wall_before = state["epoch"] + 1, state["step"], state["wall_seconds"]
        return True

    # ---- loop ----
    def train(self) -> None:
        cfg = self.config["train"]
        resumed = self.try_resume()  # may refuse: nothing in the run folder is touched before this
        if self.world.is_main:
            with atomic_path(self.out_dir / "config.yaml") as tmp:
                tmp.write_text(dump_yaml(self.config))
        log_mode = "a" if resumed else "w"
        t0 = time.perf_counter()
        with open(self.out_dir / "train_log.jsonl" if self.world.is_main else os.devnull, log_mode) as log:
            if self.dev is not None and not resumed:
                self.dev.record(self.model, log, -1, 0)  # the untrained model: the curve's first point
            for epoch in range(self.start_epoch, cfg["epochs"]):
                self.train_epoch(epoch, log)
                info = self.model.on_epoch_end(self, epoch)
                if info:  # e.g. CODER's PGC clustering statistics, next to the epoch's losses
                    log.write(json.dumps({"epoch": epoch, "step": self.step, "epoch_end": info}) + "\n")
                    log.flush()
                if self.dev is not None:
                    self.dev.record(self.model, log, epoch, self.step)
                if (epoch + 1) % cfg["checkpoint_every"] == 0 or epoch + 1 == cfg["epochs"]:
                    self.save_checkpoint(epoch, self.wall_before + time.perf_counter() - t0)
                    distributed.barrier()
        self.train_wall_seconds = self.wall_before + time.perf_counter() - t0

    def train_epoch(self, epoch: int, log) -> None:
        cfg = self.config["train"]
        lr = lr_at(self.config, epoch)
        for group, base in zip(self.optimizer.param_groups, self.model.param_groups(1.0, cfg["text_lr_scale"])):
            group["lr"] = lr * base["lr"]
        drop_last = len(self.dataset) > cfg["batch_size"]
        if self.world.size > 1:  # train.batch_size stays the global batch; each rank takes its slice
            loader = distributed.make_sharded_loader(self.dataset, cfg["batch_size"], seed=self.config["seed"],
                                                     epoch=epoch, world=self.world, num_workers=cfg["num_workers"],
                                                     drop_last=drop_last)
        else:
            loader = make_loader(self.dataset, cfg["batch_size"], shuffle=True, seed=self.config["seed"], epoch=epoch,
                                 num_workers=cfg["num_workers"], drop_last=drop_last)
        self.model.train()
        sums, count = {}, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", unit="batch", leave=False, mininterval=2,
                   disable=not (sys.stderr.isatty() and self.world.is_main))  # no \r progress lines in job logs
        for b, batch in enumerate(bar):
            batch = to_device(batch, self.device)
            self.model.before_step()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, parts = self.model.training_loss(batch, epoch)
            if not torch.isfinite(loss.detach()):
                first = int(batch["caption_index"][0]) if "caption_index" in batch else "?"
                raise TrainingError(f"{self.out_dir}: loss is {float(loss.detach())} at step {self.step + 1} (epoch {epoch + 1}, "
                                    f"batch {b + 1} of {len(loader)}, first caption {first}); stopped before the update, "
                                    f"no checkpoint written (lower train.lr or check the data)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.model.parameters())
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
            self.optimizer.step()
            self.model.after_step()
            self.step += 1
            count += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if self.step % cfg["log_every"] == 0:
                log.write(json.dumps({"epoch": epoch, "step": self.step, "lr": lr, **parts}) + "\n")
        summary = {k: v / max(count, 1) for k, v in sums.items()}
        log.write(json.dumps({"epoch": epoch, "step": self.step, "lr": lr, "epoch_mean": summary}) + "\n")
        log.flush()
        bar.close()
        if self.world.is_main:
            tqdm.write(f"epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))


def evaluate_run(config: dict, model, data: RunData, out_dir: Path, device, train_wall_seconds: float | None) -> dict:
    from itrbench.evaluation import evaluate_model

    d, e = config["data"], config["eval"]
    result = evaluate_model(model, data.eval_split, d["protocols"], device=device, batch_size=e["batch_size"],
                            token_cache=data.eval_cache, max_images=d["max_eval_images"],
                            block_images=e["block_images"], block_captions=e["block_captions"],
                            ranks_path=out_dir / "ranks.npz" if e["save_ranks"] else None)
    metrics = {
        **result,
        "train_wall_seconds": train_wall_seconds,
        "eval_settings": model.eval_settings(),
        "epochs": config["train"]["epochs"],
        "versions": package_versions(),
        "git_commit": git_commit(Path(__file__).parent),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "config_hash": config_hash(config),
        "seed": config["seed"],
        "dataset": d["dataset"],
        "method": config["method"],
        **metrics_entry(config, out_dir),
        "config": config,  # every result-changing switch is a config key: the record carries all of them
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def train_and_evaluate(config: dict, out_dir: str | Path) -> dict:
    trainer = Trainer(config, out_dir)
    try:
        trainer.train()
        if not trainer.world.is_main:  # rank 0 evaluates and writes metrics.json alone
            return {}
        metrics = evaluate_run(config, trainer.model, trainer.data, trainer.out_dir, trainer.device,
                               trainer.train_wall_seconds)
        provenance.write_evaluated(trainer.out_dir, trainer.provenance, trainer.run_id)
        return metrics
    finally:
        distributed.cleanup()


def load_trained(run_dir: str | Path):
    """Rebuild a run's model from config.yaml + checkpoint.pt (for `itrbench evaluate` and figure extras)."""
    from itrbench.config import load_config

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    device = resolve_device(config["device"])
    set_threads(config)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no checkpoint; train the run first")
    state = torch.load(ckpt, map_location=device, weights_only=False)
    old = state.get("provenance")
    if state.get("config_hash") != config_hash(config, ()):
        raise ConfigError(f"{ckpt}: trained with a different config than {run_dir / 'config.yaml'} "
                          f"({provenance.config_changes((old or {}).get('config'), config)}); retrain with `itrbench train`")
    data = prepare(config, run_dir, device, need_train=False)
    if old is not None:  # the model must have been trained on today's training data (eval data may change)
        now = {"data": {"train": provenance.split_fingerprint(data.context.train_split)}}
        changes = provenance.input_changes(old, now, parts=("data",))
        if changes:
            raise ConfigError(f"{ckpt}: trained from other inputs ({'; '.join(changes)}); retrain with `itrbench train`")
    model = build_model(config, data.context).to(device)
    model.load_state_dict(state["model"])
    model.load_extra_state(state["extra"])
    return config, model, data, device, state.get("wall_seconds")
