"""Shared encoders (SPEC §4.1): regions -> v, tokens -> w, with max / mean / GPO aggregation.

GPO (VSE∞, Chen et al. CVPR 2021) is written here because no library ships it: a small bidirectional GRU over
positional encodings yields one weight per rank; features are sorted per dimension and the weighted sum of the
sorted values is the pooled vector. Masked positions sort last and get no weight.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def positional_encoding(length: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class GPO(nn.Module):
    """Generalised pooling operator: learned weights over per-dimension sorted features."""

    def __init__(self, pe_dim: int = 32, hidden: int = 32, temperature: float = 0.1):
        super().__init__()
        self.pe_dim, self.temperature = pe_dim, temperature
        self.gru = nn.GRU(pe_dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        # The GRU reads positional encodings only, so a set's weights depend on its size alone: run it once per
        # distinct size (a batch of captions has ~20, a batch of images one) and gather. Exact, 2-3x cheaper.
        sizes, which = torch.unique(lengths, return_inverse=True)
        pe = positional_encoding(max_len, self.pe_dim, lengths.device).unsqueeze(0).expand(len(sizes), -1, -1)
        packed = nn.utils.rnn.pack_padded_sequence(pe, sizes.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=max_len)
        half = out.shape[-1] // 2
        scores = self.score((out[..., :half] + out[..., half:]) / 2).squeeze(-1)
        valid = torch.arange(max_len, device=lengths.device)[None] < sizes[:, None]
        w = torch.softmax(scores.masked_fill(~valid, float("-inf")) / self.temperature, dim=1)
        return w[which]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1)
        w = self.weights(lengths, x.shape[1])
        ranked = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).sort(dim=1, descending=True).values
        ranked = ranked.masked_fill(torch.isinf(ranked), 0.0)
        return (ranked * w.unsqueeze(-1).to(ranked.dtype)).sum(1)


class MaxPool(nn.Module):
    def forward(self, x, mask):
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of the rows where mask (B, L) is True; an empty set gives 0."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def caption_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Positions needed per caption: index of the last real token + 1 (masks need not be prefixes)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * pos).amax(1)


class MeanPool(nn.Module):
    def forward(self, x, mask):
        return masked_mean(x, mask)


def build_aggregator(name: str, gpo_dim: int = 32) -> nn.Module:
    return {"gpo": lambda: GPO(gpo_dim, gpo_dim), "max": MaxPool, "mean": MeanPool}[name]()


class RegionProjection(nn.Module):
    """Per-region linear map to F plus a 2-layer MLP residual (VSE∞)."""

    def __init__(self, in_dim: int, embed_dim: int, mlp: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, embed_dim // 2), nn.LayerNorm(embed_dim // 2), nn.ReLU(),
                                 nn.Linear(embed_dim // 2, embed_dim)) if mlp else None

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        out = self.fc(regions)
        return out + self.mlp(regions) if self.mlp is not None else out


class ImageEncoder(nn.Module):
    """regions (B, R, D) -> l2-normalised v (B, F)."""

    def __init__(self, in_dim: int, embed_dim: int, aggregator: str = "gpo", mlp: bool = True, gpo_dim: int = 32):
        super().__init__()
        self.proj = RegionProjection(in_dim, embed_dim, mlp)
        self.pool = build_aggregator(aggregator, gpo_dim)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
        return l2norm(self.pool(self.proj(regions), mask))


class TextHead(nn.Module):
    """token features (B, L, H) + mask -> l2-normalised w (B, F)."""

    def __init__(self, in_dim: int, embed_dim: int, aggregator: str = "gpo", gpo_dim: int = 32):
        super().__init__()
        self.fc = nn.Linear(in_dim, embed_dim)
        self.pool = build_aggregator(aggregator, gpo_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return l2norm(self.pool(self.fc(tokens), mask))


class TextSide(nn.Module):
    """Where token features come from: the frozen cache in the batch, or a fine-tuned transformer."""

    def __init__(self, encoder=None):
        super().__init__()
        self.encoder = encoder  # a TextEncoder in finetune mode, else None

    def forward(self, batch: dict, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Token features and mask for `batch[prefix + 'captions']` (prefix e.g. 'pos_' for generated positives)."""
        if self.encoder is not None:
            return self.encoder(batch[prefix + "captions"])
        if prefix + "tokens" not in batch:
            raise KeyError(f"batch has no '{prefix}tokens': frozen text mode needs the token-feature cache")
        return batch[prefix + "tokens"], batch[prefix + "token_mask"]
