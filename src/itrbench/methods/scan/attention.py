"""Stacked cross attention (Lee et al., ECCV 2018, §3.1-3.2): the literal per-caption reference and the blocked,
batched scorer that computes the same scores. README.md in this folder maps each equation to the code.

One direction, queries q_a attending over context items c_b of the same pair (t2i: queries = the caption's words,
context = the image's regions; i2t: queries = regions, context = words):
  s_ab  = cos(q_a, c_b)
  s̄_ab  = [s_ab]_+ / sqrt(Σ_a' [s_a'b]_+²)         normalised over the queries, per context item ([x]_+ = the
                                                     paper's max(x, 0); the authors' code uses LeakyReLU(0.1))
  α_ab  = softmax_b(λ1 s̄_ab)                        attention over the context items
  a_a   = Σ_b α_ab c_b                               attended context vector of query a
  R_a   = cos(q_a, a_a)
  S     = mean_a R_a (AVG)  or  (1/λ2) log Σ_a exp(λ2 R_a) (LSE)
Only a caption's real words take part (padding is neither a query nor a context item).

Why the batched scorer needs no per-pair vector of width F: q_a·a_a = Σ_b α_ab (q_a·c_b) reuses the dot products
already computed for s_ab, and |a_a|² = α_aᵀ G α_a with the per-item Gram matrix G = C Cᵀ of the context (K×K
per image for t2i, L×L per caption for i2t). Per pair only one (L×K) product of width F remains (the dot products),
plus two K×L softmax-sized passes and a K²L (or L²K) Gram contraction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from itrbench.models.encoders import caption_lengths  # positions needed per caption (masks need not be prefixes)

EPS = 1e-8  # every norm is clamped to at least EPS (as F.cosine_similarity)
DIRECTIONS = ("t2i", "i2t")


def pool(r: Tensor, mask: Tensor, pooling: str, lambda_lse: float, dim: int = -1) -> Tensor:
    """AVG or LSE of the per-query similarities r over `dim`, counting only queries where mask is True."""
    if pooling == "avg":
        m = mask.to(r.dtype)
        return (r * m).sum(dim) / m.sum(dim).clamp_min(1)
    if pooling == "lse":
        return torch.logsumexp((lambda_lse * r).masked_fill(~mask, float("-inf")), dim=dim) / lambda_lse
    raise ValueError(f"scan pooling: expected 'avg' or 'lse', got {pooling!r}")


# ------------------------------------------------------------------------------------------- reference
def reference_pair(regions: Tensor, words: Tensor, direction: str, lambda_softmax: float, pooling: str,
                   lambda_lse: float, slope: float = 0.0) -> Tensor:
    """S(I, T) of one pair, literally: regions (K, F), words (L_real, F) = the caption's real words only."""
    queries, context = (words, regions) if direction == "t2i" else (regions, words)
    s = F.cosine_similarity(queries[:, None, :], context[None, :, :], dim=-1, eps=EPS)   # (A, B)
    clipped = F.leaky_relu(s, slope)
    s_bar = clipped / clipped.norm(dim=0, keepdim=True).clamp_min(EPS)                 # over the queries
    alpha = torch.softmax(lambda_softmax * s_bar, dim=1)                               # over the context
    attended = alpha @ context                                                         # (A, F)
    r = F.cosine_similarity(queries, attended, dim=-1, eps=EPS)                        # (A,)
    return pool(r, torch.ones_like(r, dtype=torch.bool), pooling, lambda_lse)


def reference_scores(regions: Tensor, words: Tensor, mask: Tensor, direction: str, lambda_softmax: float,
                     pooling: str, lambda_lse: float, slope: float = 0.0) -> Tensor:
    """(n_img, n_cap) scores, one caption at a time against one image at a time (as SCAN's xattn_score loops)."""
    out = regions.new_empty(regions.shape[0], words.shape[0])
    for c in range(words.shape[0]):
        w = words[c][mask[c].bool()]
        for i in range(regions.shape[0]):
            out[i, c] = reference_pair(regions[i], w, direction, lambda_softmax, pooling, lambda_lse, slope)
    return out


# ------------------------------------------------------------------------------------------ batched
def gram(x: Tensor) -> Tensor:
    """X Xᵀ per item: (n, M, F) -> (n, M, M), in at least fp32 (squared norms come out of it)."""
    x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
    return x @ x.transpose(1, 2)


def _numerators(s_bar: Tensor, lambda_softmax: float, dim: int, valid: Tensor | None = None) -> Tensor:
    """exp(λ1 s̄) up to a positive factor per query, 0 where `valid` is False: the softmax without its normaliser.

    R = cos(q, Σ_b α_b c_b) does not change when every α_b of a query is scaled by the same positive factor, so the
    softmax's division and its max pass are not needed. The shift keeps exp in range: s̄ ≤ 1 always (a normalised
    column), so exp(λ1 (s̄ - 1)) ≤ 1; since s̄ ≥ -1 the smallest is exp(-2 λ1), which fp32 holds up to λ1 ≈ 40.
    Beyond that the row max is subtracted instead.
    """
    if lambda_softmax <= 40:
        e = torch.exp(lambda_softmax * (s_bar - 1))
        return e if valid is None else e * valid
    x = lambda_softmax * s_bar
    if valid is not None:
        x = x.masked_fill(~valid.bool(), float("-inf"))
    return torch.exp(x - x.amax(dim, keepdim=True))


def block_scores(regions: Tensor, region_gram: Tensor, words: Tensor, mask: Tensor, word_gram: Tensor,
                 direction: str, lambda_softmax: float, pooling: str, lambda_lse: float, slope: float = 0.0) -> Tensor:
    """(ni, nc) scores of an image block against a caption block, differentiable.

    regions (ni, K, F) and words (nc, L, F) l2-normalised (padding words zero), mask (nc, L) True on real words,
    region_gram (ni, K, K) = regions regionsᵀ, word_gram (nc, L, L) = words wordsᵀ (only the context side's is read).
    Each direction has its own layout, chosen so that every reduction (over K and over L) runs over a non-innermost
    dimension of a contiguous tensor (vectorised in torch; a reduction over an innermost K of 8-36 is not) and the
    Gram contraction is one batched matmul: t2i (ni, K, L, nc), i2t (nc, L, K, ni).
    """
    ni, k, dim = regions.shape
    nc, length, _ = words.shape
    mask = mask.bool()
    if direction == "t2i":
        # s[i, k, j, c] = cos(v_k, w_j): one product of the unit vectors (padding words are zero)
        s = (regions.reshape(ni * k, dim) @ words.permute(2, 1, 0).reshape(dim, length * nc)).view(ni, k, length, nc)
        real = mask.T.to(s.dtype)                                                    # (L, nc)
        clipped = F.leaky_relu(s, slope) * real
        # queries = words: normalise over the caption's words (dim 2), attend over the regions (dim 1)
        norm = (clipped * clipped).sum(2, keepdim=True).clamp_min(EPS * EPS).sqrt()  # no inf gradient at 0
        e = _numerators(clipped / norm, lambda_softmax, 1)                           # α up to a factor per word
        num = (e * s).sum(1)                                                         # ∝ w_j · a_j, (ni, L, nc)
        quad = (torch.bmm(region_gram, e.reshape(ni, k, length * nc)).view_as(e) * e).sum(1)  # ∝ |a_j|² = αᵀ G α
        r = num / quad.clamp_min(EPS * EPS).sqrt()                                   # cos(w_j, a_j), |w_j| = 1
        return pool(r, mask.T[None], pooling, lambda_lse, dim=1)                    # over the real words
    # s[c, j, k, i] = cos(w_j, v_k)
    s = (words.reshape(nc * length, dim) @ regions.permute(2, 1, 0).reshape(dim, k * ni)).view(nc, length, k, ni)
    real = mask[:, :, None, None]                                                    # (nc, L, 1, 1)
    clipped = F.leaky_relu(s, slope) * real
    # queries = regions: normalise over the regions (dim 2), attend over the caption's real words (dim 1)
    norm = (clipped * clipped).sum(2, keepdim=True).clamp_min(EPS * EPS).sqrt()
    e = _numerators(clipped / norm, lambda_softmax, 1, real)                        # padding words weigh nothing
    num = (e * s).sum(1)                                                             # ∝ v_k · a_k, (nc, K, ni)
    quad = (torch.bmm(word_gram, e.reshape(nc, length, k * ni)).view_as(e) * e).sum(1)  # ∝ α_kᵀ H α_k
    r = num / quad.clamp_min(EPS * EPS).sqrt()                                       # cos(v_k, a_k), |v_k| = 1
    return pool(r, torch.ones_like(r, dtype=torch.bool), pooling, lambda_lse, dim=1).T  # over the regions


def blocked_scores(regions: Tensor, words: Tensor, mask: Tensor, direction: str, lambda_softmax: float, pooling: str,
                   lambda_lse: float, slope: float = 0.0, *, block_images: int = 32,
                   block_captions: int = 128) -> Tensor:
    """(n_img, n_cap) scores of every pair, equal to `reference_scores` up to float rounding.

    Memory is bounded by block_images x block_captions x K x L (a few such tensors): captions are taken in
    length-sorted blocks, each trimmed to its longest caption, against blocks of images. Grams are computed once per
    item, never per pair.
    """
    mask = mask.bool()
    if not bool(mask.any(1).all()):
        raise ValueError("scan scorer: every caption needs at least one real token (mask row all False)")
    lengths = caption_lengths(mask)
    order = torch.argsort(lengths, stable=True)
    lengths_cpu = lengths.cpu()
    region_gram = gram(regions) if direction == "t2i" else None
    out = torch.empty(regions.shape[0], words.shape[0], dtype=torch.promote_types(regions.dtype, torch.float32),
                      device=regions.device)
    for c0 in range(0, words.shape[0], block_captions):
        idx = order[c0:c0 + block_captions]
        length = int(lengths_cpu[idx.cpu()].max())
        w, m = words.index_select(0, idx)[:, :length], mask.index_select(0, idx)[:, :length]
        word_gram = gram(w) if direction == "i2t" else None
        cols = out.new_empty(regions.shape[0], len(idx))
        for i0 in range(0, regions.shape[0], block_images):
            sl = slice(i0, i0 + block_images)
            cols[sl] = block_scores(regions[sl], None if region_gram is None else region_gram[sl], w, m, word_gram,
                                    direction, lambda_softmax, pooling, lambda_lse, slope)
        out[:, idx] = cols
    return out
