"""Bidirectional triplet ranking loss with the hardest in-batch negative (VSE++, Faghri et al. 2018).

Used by the VSE++ baseline, by CODER's Table 2 row 1 (instance_loss: btr) and by AsCL's `w triplet`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def same_image_mask(image_index: Tensor) -> Tensor:
    """(N, N) True where caption j's image is row i's image: such pairs are never negatives (every method's loss)."""
    return image_index[:, None] == image_index[None, :]


def btr_loss(sims: Tensor, same_image: Tensor, margin: float = 0.2, reduction: str = "sum") -> Tensor:
    """sum_i [m + S(i, c^) - S(i, i)]_+ + sum_j [m + S(i^, j) - S(j, j)]_+ with hardest negatives c^, i^.

    sims (N, N): rows images, columns captions, positives on the diagonal. same_image bool (N, N) True where
    column j's caption belongs to row i's image (diagonal included): those are never negatives, so two
    captions of one image in a batch do not push each other away. An anchor without any negative costs 0.
    reduction: "sum" over the batch (VSE++/VSE∞ convention, the default) or "mean" (divides by N).
    """
    if sims.dim() != 2 or sims.shape[0] != sims.shape[1] or same_image.shape != sims.shape:
        raise ValueError(f"btr_loss: expected square sims and same_image, got {tuple(sims.shape)} / {tuple(same_image.shape)}")
    sims = sims if sims.dtype == torch.float64 else sims.float()
    pos = sims.diagonal()
    neg = ~same_image
    # hinge first, then zero the non-negatives: the max over a row of non-negative values is the hardest one
    cost_caption = (margin + sims - pos[:, None]).clamp_min(0).masked_fill(~neg, 0.0).amax(dim=1)  # image anchors
    cost_image = (margin + sims - pos[None, :]).clamp_min(0).masked_fill(~neg, 0.0).amax(dim=0)    # caption anchors
    total = cost_caption + cost_image
    if reduction == "sum":
        return total.sum()
    if reduction == "mean":
        return total.mean()
    raise ValueError(f"btr_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
