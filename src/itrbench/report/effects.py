"""Ablation effects with their seed noise: per-seed paired differences between two experiments.

Two experiments run with the same seed share the initialisation draw and the data order, so the difference per
seed removes much of the run-to-run noise that the mean ± std of a table row carries; an effect is worth quoting
when |mean difference| is large against the standard deviation of those differences.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from itrbench.errors import DataError


def paired_effects(records: pd.DataFrame, pairs: list[tuple[str, str]], protocol: str, metric: str = "rsum",
                   dataset_key: str | None = None) -> pd.DataFrame:
    """One line per (base, variant): mean and std of variant − base over the seeds both have, and the table std
    of each side for comparison."""
    recs = records[records["protocol"] == protocol]
    if dataset_key is not None:
        recs = recs[recs["dataset_key"] == dataset_key]
    by_exp = {e: g.drop_duplicates("seed").set_index("seed")[metric] for e, g in recs.groupby("experiment")}
    lines = []
    for base, variant in pairs:
        missing = [e for e in (base, variant) if e not in by_exp]
        if missing:
            raise DataError(f"effects: no {protocol} records for {', '.join(missing)}")
        a, b = by_exp[base], by_exp[variant]
        seeds = sorted(set(a.index) & set(b.index))
        diff = (b[seeds] - a[seeds]).to_numpy(float)
        lines.append({
            "base": base, "variant": variant, "protocol": protocol, "metric": metric, "n_seeds": len(seeds),
            "base_mean": a[seeds].mean(), "variant_mean": b[seeds].mean(),
            "diff_mean": diff.mean() if len(diff) else np.nan,
            "diff_std": diff.std(ddof=1) if len(diff) > 1 else np.nan,
            "base_std": a[seeds].std(ddof=1) if len(seeds) > 1 else np.nan,
            "variant_std": b[seeds].std(ddof=1) if len(seeds) > 1 else np.nan,
            "wins": int((diff > 0).sum()),
        })
    return pd.DataFrame(lines)
