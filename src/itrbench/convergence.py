"""Convergence as a measured property: dev-split R@sum after every epoch and the rule that calls a run converged.

The trainer evaluates the dev split once before training (step 0) and after every epoch, and writes each point to
train_log.jsonl as `{"epoch": e, "step": s, "dev": {...}}` (e = -1 for the point before training). The rule:

    E epochs, dev R@sum v_0 (before training), v_1 ... v_E (after each epoch);
    window w = ceil(E / 4) epochs (at least 1): the w + 1 points v_(E-w) ... v_E;
    a least-squares line through them: level s at the window's start, rise r = slope * w over the window;
    converged  <=>  s > 0 and r < 0.02 * s.

Why a fitted line and not the window's maximum: a 200-image dev split moves R@sum by ~1.2 % (median) from one
plateau epoch to the next, and "max of the window minus its start" then calls a perfectly flat run still rising
in 41 % of cases (w = 8) while the fitted rise does so in 6 %, and still catches 79 % of runs that really rise
3 % over the window (bench/convergence_rule.py prints these rates). For w = 1 the line is the last step.
docs/evaluation.md.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from itrbench.errors import DataError

WINDOW_FRACTION = 0.25
RELATIVE_TOLERANCE = 0.02
RULE = (f"converged when a least-squares line through dev R@sum over the last {WINDOW_FRACTION:.0%} of epochs "
        f"(at least one) rises by less than {RELATIVE_TOLERANCE:.0%} of its value at the window's start")


def convergence(rsum_per_epoch, fraction: float = WINDOW_FRACTION, tolerance: float = RELATIVE_TOLERANCE) -> dict:
    """Apply the rule to [v_0 (before training), v_1, ..., v_E] (dev R@sum after each epoch)."""
    v = [float(x) for x in rsum_per_epoch]
    if len(v) < 2:
        raise DataError(f"convergence: expected dev R@sum before training and after at least one epoch, got {len(v)} values")
    if any(math.isnan(x) for x in v):
        raise DataError("convergence: dev R@sum contains NaN")
    epochs = len(v) - 1
    window = max(1, math.ceil(fraction * epochs))
    start, rise = window_trend(v[epochs - window:])
    return {
        "converged": bool(start > 0 and rise < tolerance * start),
        "window_epochs": window,
        "window_start_rsum": start,          # the fitted line at the window's start
        "window_rise_rsum": rise,            # the fitted line's rise over the window
        "window_max_rsum": max(v[epochs - window + 1:]),
        "relative_gain": rise / start if start > 0 else None,
        "final_dev_rsum": v[-1],
        "best_dev_rsum": max(v[1:]),
        "best_epoch": int(np.argmax(v[1:])),  # 0-based epoch of the best dev R@sum
    }


def window_trend(values) -> tuple[float, float]:
    """(level at the first point, rise to the last point) of the least-squares line through equally spaced values."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return float(y.mean() - slope * x.mean()), slope * (len(y) - 1)


def read_dev_curve(log_path: str | Path) -> list[dict]:
    """The dev points of a train_log.jsonl, one per epoch in order (a resumed run re-runs epochs: the last wins)."""
    points: dict[int, dict] = {}
    with open(log_path) as f:
        for n, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{log_path}:{n}: not a JSON line") from None
            if "dev" in rec:
                points[int(rec["epoch"])] = {"epoch": int(rec["epoch"]), "step": int(rec["step"]), **rec["dev"]}
    return [points[e] for e in sorted(points)]


def curve_summary(points: list[dict], epochs: int) -> dict:
    """metrics.json's `convergence` entry: the rule's numbers and the curve (epoch, step, dev R@sum)."""
    have = [p["epoch"] for p in points]
    if have != list(range(-1, epochs)):
        raise DataError(f"train_log.jsonl: expected dev points for epochs -1..{epochs - 1}, got {have}; "
                        "a run resumed from a checkpoint written before dev evaluation cannot be judged: retrain it")
    rsum = [p["rsum"] for p in points]
    return {
        "rule": RULE,
        **convergence(rsum),
        "curve": {"epoch": have, "step": [p["step"] for p in points], "rsum": rsum},
    }


def dev_metrics(model, split, *, device, token_cache=None, batch_size: int = 256, max_images=None,
                block_images: int = 1000, block_captions: int = 5000) -> dict:
    """R@K and R@sum of the whole dev split (one matrix, every pair scored), without touching any random state."""
    from itrbench.evaluation import compute_sims, encode_split, recall_at_k

    was_training = model.training
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        img, cap, _ = encode_split(model, split, device=device, batch_size=batch_size, token_cache=token_cache,
                                   max_images=max_images)
        sims, _ = compute_sims(model, img, cap, block_images=block_images, block_captions=block_captions, device=device)
    np.random.set_state(np_state)
    model.train(was_training)
    n_img, n_cap = sims.shape
    m = recall_at_k(sims, n_cap // n_img)
    return {k: m[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")}


class DevProbe:
    """Evaluates the dev split at the trainer's hook points and logs each point to train_log.jsonl."""

    def __init__(self, config: dict, split, token_cache, device):
        self.split, self.token_cache, self.device = split, token_cache, device
        self.max_images = config["data"]["max_dev_images"]
        self.eval = config["eval"]

    def record(self, model, log, epoch: int, step: int) -> dict:
        m = dev_metrics(model, self.split, device=self.device, token_cache=self.token_cache,
                        batch_size=self.eval["batch_size"], max_images=self.max_images,
                        block_images=self.eval["block_images"], block_captions=self.eval["block_captions"])
        log.write(json.dumps({"epoch": epoch, "step": step, "dev": m}) + "\n")
        log.flush()
        return m


def metrics_entry(config: dict, run_dir: str | Path) -> dict:
    """What metrics.json says about convergence: `converged` (None without a dev split) and `convergence`."""
    log = Path(run_dir) / "train_log.jsonl"
    if config["data"]["dev_split"] is None or not log.is_file():
        return {"converged": None}
    summary = curve_summary(read_dev_curve(log), config["train"]["epochs"])
    return {"converged": summary["converged"], "convergence": summary}
