"""AsCL's asymmetry-sensitive contrastive loss (SPEC §4.3, paper Eqs. 5-7).

For a batch of N pairs (I_n, T_n) with one generated negative caption T⁻_m per caption:

    t2i_n = -log  e^{S(I_n,T_n)/τ} / Σ_m e^{S(I_m,T_n)/τ}                         (column n of sims)
    i2t_n = -log  e^{S(I_n,T_n)/τ} / ( Σ_m e^{S(I_n,T_m)/τ} + Σ_m α_nm e^{S(I_n,T⁻_m)/τ} )
    α_nm  = 0 where S(I_n,T⁻_m) > S(I_n,T_n) - 1e-6 (a "negative" that beats or ties the positive is dropped), else 1

and L_I = mean_n (t2i_n + i2t_n). L_II&III is the same function applied to the generated positives.
α is a hard 0/1 filter: it is a comparison, so no gradient flows through it. A generated negative that scores
like the positive (within ALPHA_TIE = 1e-6, e.g. a shuffle of a caption with one distinct word) is dropped
explicitly: without the tolerance float rounding alone would decide whether it counts.
"""
from __future__ import annotations

import torch
from torch import Tensor


ALPHA_TIE = 1e-6


def alpha_keep(gen_sims: Tensor, pos: Tensor) -> Tensor:
    """α as a bool mask: gen_sims (N, M) [n, m] = S(I_n, T⁻_m), pos (N,) = S(I_n, T_n); True where kept, i.e.
    S(I_n, T⁻_m) < S(I_n, T_n) - ALPHA_TIE (compared on detached scores in float32 or wider)."""
    dtype = torch.promote_types(gen_sims.dtype, torch.float32)
    return gen_sims.detach().to(dtype) < pos.detach().to(dtype)[:, None] - ALPHA_TIE


def ascl_contrastive(sims: Tensor, gen_sims: Tensor | None, tau: float, same_image: Tensor | None = None) -> Tensor:
    """L_I of one batch: mean over pairs n of the t2i and i2t InfoNCE terms of Eq. 5.

    sims (N, N): sims[m, n] = S(I_m, T_n), positives on the diagonal.
    gen_sims (N, N) or None: gen_sims[n, m] = S(I_n, T⁻_m); None (or zero columns) = no generated negatives.
    tau: temperature > 0.
    same_image (N, N) bool, optional (not part of Eq. 5): True where caption n belongs to image m; such
    off-diagonal in-batch pairs are left out of both denominators, so two captions of one image in a batch do
    not push each other apart. Generated negatives are never masked: they are negatives by construction.
    """
    if sims.dim() != 2 or sims.shape[0] != sims.shape[1] or sims.shape[0] == 0:
        raise ValueError(f"ascl_contrastive: sims must be a non-empty square (N, N) matrix, got {tuple(sims.shape)}")
    if tau <= 0:
        raise ValueError(f"ascl_contrastive: tau must be > 0, got {tau}")
    n = sims.shape[0]
    dtype = torch.promote_types(sims.dtype, torch.float32)  # bf16 scores (autocast) are widened
    logits = sims.to(dtype) / tau
    pos = logits.diagonal()
    if same_image is not None:
        if same_image.shape != sims.shape:
            raise ValueError(f"ascl_contrastive: same_image must be {tuple(sims.shape)}, got {tuple(same_image.shape)}")
        eye = torch.eye(n, dtype=torch.bool, device=sims.device)
        logits = logits.masked_fill(same_image.to(sims.device) & ~eye, float("-inf"))
    # column n holds the positive and the other images for caption n
    t2i = torch.logsumexp(logits, dim=0) - pos
    row = logits
    if gen_sims is not None and gen_sims.numel() > 0:
        if gen_sims.dim() != 2 or gen_sims.shape[0] != n:
            raise ValueError(f"ascl_contrastive: gen_sims must be ({n}, M), got {tuple(gen_sims.shape)}")
        # the paper's '>' plus an explicit tie band; compared on detached scores (the filter is not differentiated)
        dropped = ~alpha_keep(gen_sims, sims.diagonal())
        gen = (gen_sims.to(dtype) / tau).masked_fill(dropped, float("-inf"))
        row = torch.cat([row, gen], dim=1)
    i2t = torch.logsumexp(row, dim=1) - pos
    return (t2i + i2t).mean()
