"""How often the convergence rule is wrong, for the dev-split noise a run really has.

Simulates dev R@sum curves over the rule's window (a flat plateau, and one that rises 3 % over the window) with
Gaussian epoch-to-epoch noise, and prints the share each rule calls "still rising": the rule in use (a least-squares
line through the window, itrbench.convergence) and the earlier one (window maximum minus the window's start).
With `--runs DIR` (a results/runs folder) it also measures the noise of real runs (residual std around the window's
line, relative to its level) and counts the runs each rule calls converged.

    python bench/convergence_rule.py [--runs results/runs]
"""
from __future__ import annotations

import argparse
import glob
import json
import math

import numpy as np

from itrbench.convergence import RELATIVE_TOLERANCE, WINDOW_FRACTION, convergence, window_trend


def max_rule_converged(v: list[float]) -> bool:
    epochs = len(v) - 1
    w = max(1, math.ceil(WINDOW_FRACTION * epochs))
    start = v[epochs - w]
    return start > 0 and max(v[epochs - w + 1:]) - start < RELATIVE_TOLERANCE * start


def flagged(rule, window: int, noise: float, rise: float, n: int, rng) -> float:
    """Share of simulated windows (level 1, `rise` over the window, relative noise) the rule calls not converged."""
    x = np.arange(window + 1) / window
    curves = 1 + rise * x + noise * rng.standard_normal((n, window + 1))
    epochs = 4 * window  # so that the rule's window is exactly `window` epochs
    pad = np.ones((n, epochs - window))
    return float(np.mean([not rule(list(c)) for c in np.hstack([pad, curves])]))


def measured(runs: str) -> None:
    noise, new, old, total = [], 0, 0, 0
    for path in sorted(glob.glob(f"{runs}/*/seed*/metrics.json")):
        curve = json.load(open(path)).get("convergence", {}).get("curve", {}).get("rsum")
        if not curve:
            continue
        epochs = len(curve) - 1
        w = max(1, math.ceil(WINDOW_FRACTION * epochs))
        y = np.asarray(curve[epochs - w:], dtype=float)
        if w >= 2:
            level, rise = window_trend(y)
            resid = y - (level + rise * np.arange(w + 1) / w)
            noise.append(resid.std(ddof=2) / level)
        total += 1
        new += convergence(curve)["converged"]
        old += max_rule_converged(curve)
    print(f"{runs}: {total} runs; relative dev noise around the window's line: median {np.median(noise):.4f}, "
          f"quartiles {np.quantile(noise, 0.25):.4f}-{np.quantile(noise, 0.75):.4f}")
    print(f"converged: line rule {new}/{total}, max rule {old}/{total}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", help="a results/runs folder whose metrics.json curves to measure")
    ap.add_argument("--samples", type=int, default=20000, help="simulated curves per cell")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    line_rule = lambda v: convergence(v)["converged"]  # noqa: E731
    print("window  noise   flat: flagged (line / max)   rising 3 %: caught (line / max)")
    for window in (3, 4, 8):  # 9-12, 13-16 and 29-32 epochs
        for noise in (0.006, 0.012, 0.018):
            flat = [flagged(r, window, noise, 0.0, args.samples, rng) for r in (line_rule, max_rule_converged)]
            rising = [flagged(r, window, noise, 0.03, args.samples, rng) for r in (line_rule, max_rule_converged)]
            print(f"{window:6d}  {noise:.3f}  {flat[0]:13.3f} / {flat[1]:.3f}  {rising[0]:22.3f} / {rising[1]:.3f}")
    if args.runs:
        measured(args.runs)


if __name__ == "__main__":
    main()
