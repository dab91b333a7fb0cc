"""Learning curves: dev-split R@sum against the optimizer step for the main row of every method, per data set.

The curve of each run is the `convergence.curve` entry of its metrics.json (itrbench.convergence): dev R@sum before
training (step 0) and after every epoch. Seeds share the schedule, so their points share steps: the line is the
mean over seeds and the band spans the seeds' minimum and maximum. The legend says how many seeds converged.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from itrbench.errors import DataError
from itrbench.report.figures import METHOD_COLORS, METHOD_LABELS, empty_panel, finish, legend_below, new_figure


def read_curves(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, curve point): experiment, dataset_key, dataset, method, seed, step, epoch, rsum, converged.

    Runs whose metrics.json has no curve (no dev split) are left out."""
    rows = []
    runs = records.drop_duplicates("record_dir") if len(records) else records
    for r in runs.to_dict("records"):
        path = Path(r["record_dir"]) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: unreadable ({type(err).__name__})") from None
        conv = metrics.get("convergence")
        if not conv:
            continue
        curve = conv["curve"]
        for epoch, step, rsum in zip(curve["epoch"], curve["step"], curve["rsum"]):
            rows.append({k: r[k] for k in ("experiment", "dataset_key", "dataset", "method", "seed")}
                        | {"epoch": epoch, "step": step, "rsum": rsum, "converged": conv["converged"]})
    return pd.DataFrame(rows, columns=["experiment", "dataset_key", "dataset", "method", "seed", "epoch", "step",
                                       "rsum", "converged"])


def plot_learning_curves(records, paper, registry):
    """One panel per data set; one line per main-row experiment (mean over seeds, band = min..max)."""
    curves = read_curves(records)
    datasets = [d for d in ("f30k", "coco") if d in set(curves["dataset_key"])] or ["f30k"]
    fig, axes = new_figure(1, len(datasets), panel=(4.4, 3.3))
    for ax, ds in zip(axes[0], datasets):
        part = curves[curves["dataset_key"] == ds]
        if part.empty:
            empty_panel(ax, "no dev curves yet (runs without a dev split)")
            continue
        for (method, exp), g in part.groupby(["method", "experiment"], sort=False):
            by_step = g.groupby("step")["rsum"]
            mean, lo, hi = by_step.mean(), by_step.min(), by_step.max()
            flags = g.drop_duplicates("seed")["converged"]
            label = f"{METHOD_LABELS.get(method, method)} ({int(flags.sum())}/{len(flags)} converged)"
            color = METHOD_COLORS.get(method)
            ax.plot(mean.index, mean.to_numpy(), marker="o", markersize=3, color=color, label=label)
            ax.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"{part['dataset'].iloc[0]} (dev split)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("dev R@sum")
        legend_below(ax, ncol=1)
    seeds = sorted(curves["seed"].unique())
    footer = f"line = mean over seeds {', '.join(map(str, seeds))}; band = min..max over seeds" if seeds else None
    return finish(fig, "Learning curves: dev R@sum per epoch (main rows)", footer)
