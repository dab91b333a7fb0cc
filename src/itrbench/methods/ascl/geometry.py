"""Alignment and uniformity of a model's unimodal embeddings (AsCL Fig. 4, SPEC §4.3).

Two readings of the same geometry, both on l2-normalised embeddings:
  * AsCL's: mean Euclidean distance of positive image–text pairs and of text–text pairs of one image (alignment,
    lower = tighter), and the mean (and variance) of the distance among all images / all texts (uniformity,
    higher = more spread);
  * Wang & Isola (ICML 2020): align = E ||x - y||^alpha over positive pairs, uniform = log E exp(-t ||x - y||²)
    over distinct pairs of one modality (lower = more uniform).

All-pairs statistics are streamed over row blocks of the Gram matrix so memory stays at block x n (25,000 toy-coco
captions would need 2.5 GB as one matrix); sums are kept in float64.
"""
from __future__ import annotations

import math

import torch

from itrbench.errors import DataError
from itrbench.models.encoders import l2norm


def _unit(x) -> torch.Tensor:
    return l2norm(torch.as_tensor(x).detach().float(), eps=1e-12)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances between the unit rows of a and of b, (..., len(a), len(b)); clamped at 0 against rounding."""
    return (2.0 - 2.0 * (a @ b.transpose(-1, -2))).clamp_min(0.0)


def pairwise_stats(x, t: float = 2.0, block: int = 1024) -> dict:
    """Distance statistics over the distinct pairs i < j of the rows of `x` (normalised here).

    Returns mean and (population) variance of ||x_i - x_j|| and Wang & Isola's log E exp(-t ||x_i - x_j||²).
    """
    x = _unit(x)
    n = x.shape[0]
    if n < 2:
        raise DataError(f"pairwise_stats: need at least 2 embeddings, got {n}")
    total = total_sq = 0.0
    lse = -math.inf
    cols = torch.arange(n)
    for r0 in range(0, n - 1, block):
        rows = torch.arange(r0, min(r0 + block, n))
        sq = _sq_dist(x[rows], x)
        upper = cols[None, :] > rows[:, None]  # each unordered pair once, no self pairs
        sq = sq[upper].double()
        d = sq.sqrt()
        total += float(d.sum())
        total_sq += float(sq.sum())  # sum of d² = sum of squared distances
        lse = float(torch.logaddexp(torch.tensor(lse, dtype=torch.float64), torch.logsumexp(-t * sq, 0)))
    pairs = n * (n - 1) / 2
    mean = total / pairs
    return {"mean": mean, "var": max(total_sq / pairs - mean * mean, 0.0), "log_mean_exp": lse - math.log(pairs),
            "pairs": int(pairs)}


def alignment_uniformity(img, cap, captions_per_image: int = 5, t: float = 2.0, alpha: float = 2.0) -> dict:
    """AsCL Fig. 4 measures (and Wang & Isola's) of image embeddings (n, F) and caption embeddings (n·cpi, F),
    caption j belonging to image j // cpi (the precomp layout)."""
    v, w = _unit(img), _unit(cap)
    n, cpi = v.shape[0], captions_per_image
    if w.shape[0] != n * cpi:
        raise DataError(f"alignment_uniformity: {w.shape[0]} captions for {n} images; expected {cpi} per image")
    if cpi < 2:
        raise DataError("alignment_uniformity: text-text alignment needs at least 2 captions per image")
    own = v.repeat_interleave(cpi, 0)
    it = ((own - w) ** 2).sum(-1).clamp_min(0).double()          # squared distance, each caption to its image
    groups = w.view(n, cpi, -1)
    tt = _sq_dist(groups, groups).double()
    iu = torch.triu_indices(cpi, cpi, offset=1)
    tt = tt[:, iu[0], iu[1]]                                      # the cpi·(cpi-1)/2 caption pairs of each image
    images, texts = pairwise_stats(v, t), pairwise_stats(w, t)
    return {
        "alignment": {"image_text": float(it.sqrt().mean()), "text_text": float(tt.sqrt().mean())},
        "uniformity": {"image": {"mean": images["mean"], "var": images["var"]},
                       "text": {"mean": texts["mean"], "var": texts["var"]}},
        "wang_isola": {"align": float((it ** (alpha / 2)).mean()), "uniform_image": images["log_mean_exp"],
                       "uniform_text": texts["log_mean_exp"], "t": t, "alpha": alpha},
        "n_images": n,
        "n_captions": int(w.shape[0]),
    }
