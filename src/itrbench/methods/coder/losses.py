"""CODER's diversity estimate (Eq. 3) and directional diversity-sensitive contrastive loss (Eqs. 4-5).

Both work on one direction at a time: rows are anchors, columns are candidates. Callers build the
masks (which candidates are negatives, where the positive sits), so the same two functions serve the
in-batch loss, the memory-bank loss (M-DCL) and the concept-level loss. See docs/coder.md.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _upcast(t: Tensor) -> Tensor:
    """float64 stays float64 (exact references); half / bfloat16 / float32 compute in float32."""
    return t if t.dtype == torch.float64 else t.float()


@torch.no_grad()
def diversity(sims: Tensor, neg_mask: Tensor, eps: float = 0.1) -> Tensor:
    """Eq. 3: div_n = 1 / sigmoid(eps / SD_n), then divided by the largest div in the batch.

    SD_n is the population standard deviation of anchor n's similarities to its negatives
    (sqrt(E[S^2] - E[S]^2)); it is computed around the mean, which is the same number with less
    cancellation in float32. An anchor without negatives, or whose negatives are all equally similar,
    gets SD = 0 -> eps/SD = inf -> div = 1 (the smallest possible value before normalisation).
    Diversity is a weight, never a path for gradients.
    """
    if sims.shape != neg_mask.shape:
        raise ValueError(f"diversity: sims {tuple(sims.shape)} and neg_mask {tuple(neg_mask.shape)} differ")
    s = _upcast(sims.detach())
    m = neg_mask.to(s.dtype)
    count = m.sum(1).clamp_min(1.0)
    mean = (s * m).sum(1) / count
    var = (((s - mean[:, None]) ** 2) * m).sum(1) / count
    sd = var.sqrt()
    div = 1.0 / torch.sigmoid(eps / sd)  # sd = 0 -> inf -> sigmoid 1 -> div 1
    return div / div.max()


def dcl_directional(
    sims: Tensor,
    pos_index: Tensor,
    neg_mask: Tensor,
    div: Tensor | None = None,
    mu: float = 0.1,
    gamma: float = 0.3,
) -> Tensor:
    """Eqs. 4-5 for one direction, mean over the N anchors (rows).

    l(n) = mu * [ log(1 + sum_{q in Q_n} exp((S_nq - gamma) / (mu * div_n))) - log(1 + S_n,p(n)) ]

    sims (N, M); pos_index (N,) column of each anchor's positive; neg_mask bool (N, M), True exactly on the
    negatives Q_n (the positive and other non-negatives must be False); div (N,) or None (= implicit, 1).
    The log(1 + sum exp) is a logsumexp over the masked logits plus one zero logit, so it is stable and an
    anchor without negatives contributes log(1) = 0 with finite gradients.
    """
    if sims.dim() != 2 or neg_mask.shape != sims.shape:
        raise ValueError(f"dcl_directional: sims {tuple(sims.shape)} and neg_mask {tuple(neg_mask.shape)} must be equal 2-D")
    n = sims.shape[0]
    sims = _upcast(sims)
    scale = mu if div is None else mu * div.detach().to(sims.dtype)[:, None]
    logits = ((sims - gamma) / scale).masked_fill(~neg_mask, float("-inf"))
    one = torch.zeros(n, 1, dtype=logits.dtype, device=logits.device)  # the "+1" inside the log
    neg_term = torch.logsumexp(torch.cat([logits, one], dim=1), dim=1)
    pos = sims.gather(1, pos_index.long().view(n, 1)).squeeze(1)
    # cos = -1 exactly would give log(0); clamp keeps the loss finite (gradient there is irrelevant anyway)
    pos_term = torch.log1p(pos.clamp_min(-1.0 + 1e-6))
    return (mu * (neg_term - pos_term)).mean()


def dcl_loss(sims: Tensor, same_image: Tensor, div_rows: Tensor | None = None, div_cols: Tensor | None = None,
             mu: float = 0.1, gamma: float = 0.3) -> Tensor:
    """In-batch L_DCL(V, W) = l(V -> W) + l(W -> V) for a square batch with positives on the diagonal.

    sims (N, N): rows images, columns captions; same_image bool (N, N) True where two batch items share an
    image (diagonal included): those pairs are not negatives. div_rows / div_cols: diversities of the image
    and caption anchors (None = implicit).
    """
    n = sims.shape[0]
    pos = torch.arange(n, device=sims.device)
    neg = ~same_image
    return (dcl_directional(sims, pos, neg, div_rows, mu, gamma)
            + dcl_directional(sims.t(), pos, neg.t(), div_cols, mu, gamma))
