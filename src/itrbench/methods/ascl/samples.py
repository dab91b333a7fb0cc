"""AsCL's generated samples (SPEC §4.3): negatives from word features, positives from caption text.

Negatives (Asymmetry-I): `gaussian`, `cutoff` and `dropout` act on a batch of word features W (B, L, D) with a
mask (B, L) that is True on real tokens. Padding rows are never touched, every random draw comes from the
`torch.Generator` passed in (drawn on the CPU, so a seed gives the same samples on CPU and CUDA), and each
caption gets one negative. `shuffle` is different: the fusion pools word features without positions, so
permuting token rows after the encoder would give back the positive's score. The caption's *words* are
permuted before the text encoder instead (`shuffled_text`), and the encoded shuffle arrives as its own
(words, mask) pair; in frozen text mode those texts are cached once per data set like the positives.

Positives (Asymmetry-II / III) are new caption *texts*: `long` = the caption followed by another caption of
the same image, `short` = the first half of its words. They are texts (not spliced features) so that a frozen
text encoder can encode them like any caption; `generated_positive_texts` makes one per training caption,
deterministically, so the token-feature cache encodes each set once per data set.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from itrbench.errors import ConfigError, DataError

NEGATIVE_KINDS = ("gaussian", "shuffle", "cutoff", "dropout")
NEGATIVES = ("none", *NEGATIVE_KINDS, "mixture")
POSITIVES = ("none", "long", "short", "both")


def _rand(shape, generator: torch.Generator, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randn(shape, generator: torch.Generator, device) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _keep(mask: Tensor, like: Tensor) -> Tensor:
    return mask.unsqueeze(-1).to(like.dtype)


def gaussian_noise(words: Tensor, mask: Tensor, generator: torch.Generator, std: float = 0.1) -> Tensor:
    """W + N(0, std²) on real tokens."""
    return words + std * _randn(words.shape, generator, words.device).to(words.dtype) * _keep(mask, words)


def shuffled_text(caption: str, rng: np.random.Generator) -> str:
    """The caption's words in a random order that differs from the original whenever it can.

    A caption with fewer than 2 distinct words has no other order and comes back unchanged (its encoded
    negative equals the positive and the α filter drops it).
    """
    words = caption.split()
    if len(set(words)) < 2:
        return " ".join(words)
    while True:  # each draw keeps the original order with probability <= 1/2
        out = [words[i] for i in rng.permutation(len(words))]
        if out != words:
            return " ".join(out)


def shuffled_texts(texts: Sequence[str], seed: int = 0) -> list[str]:
    """One word-shuffled text per input text, deterministic in `seed` (the cached `shuffle` negatives)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    return [shuffled_text(t, rng) for t in texts]


def cutoff(words: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """Per caption, zero either one random real token (row) or one random feature (column), 50/50."""
    b, length, dim = words.shape
    which_token = _rand((b,), generator, words.device) < 0.5
    # a uniformly random real token: the argmax of uniform keys over real positions
    token = _rand((b, length), generator, words.device).masked_fill(~mask, -1.0).argmax(dim=1)
    column = (_rand((b,), generator, words.device) * dim).long().clamp_max(dim - 1)
    row_hit = torch.zeros(b, length, dtype=torch.bool, device=words.device)
    row_hit[torch.arange(b, device=words.device), token] = True
    col_hit = torch.zeros(b, dim, dtype=torch.bool, device=words.device)
    col_hit[torch.arange(b, device=words.device), column] = True
    hit = torch.where(which_token[:, None, None], row_hit[:, :, None], col_hit[:, None, :]) & mask[:, :, None]
    return words.masked_fill(hit, 0.0)


def dropout(words: Tensor, mask: Tensor, generator: torch.Generator, p: float = 0.1) -> Tensor:
    """Elementwise dropout with probability p on real tokens, survivors scaled by 1/(1-p) (as nn.Dropout)."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"ascl.dropout_p: expected 0 <= p < 1, got {p}")
    drop = (_rand(words.shape, generator, words.device) < p) & mask.unsqueeze(-1)
    scale = torch.where(mask.unsqueeze(-1), torch.tensor(1.0 / (1.0 - p), dtype=words.dtype, device=words.device),
                        torch.tensor(1.0, dtype=words.dtype, device=words.device))
    return (words * scale).masked_fill(drop, 0.0)


def _pad_to(words: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    extra = length - words.shape[1]
    if extra <= 0:
        return words, mask
    return (torch.cat([words, words.new_zeros(words.shape[0], extra, words.shape[2])], 1),
            torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1))


def mixture(words: Tensor, mask: Tensor, generator: torch.Generator, shuffled: tuple[Tensor, Tensor],
            std: float = 0.1, p: float = 0.1) -> tuple[Tensor, Tensor]:
    """One of the four negatives per caption, chosen uniformly at random; returns (words, mask)."""
    choice = (_rand((words.shape[0],), generator, words.device) * 4).long().clamp_max(3)
    # every kind is drawn for the whole batch (fixed order of draws), then each caption keeps its own kind
    sw, sm = shuffled
    length = max(words.shape[1], sw.shape[1])
    words, mask = _pad_to(words, mask, length)
    sw, sm = _pad_to(sw.to(words.dtype), sm.bool(), length)
    outs = torch.stack([gaussian_noise(words, mask, generator, std), sw,
                        cutoff(words, mask, generator), dropout(words, mask, generator, p)])
    masks = torch.stack([mask, sm, mask, mask])
    pick = choice.view(1, -1, 1)
    out = outs.gather(0, pick.unsqueeze(-1).expand(1, *words.shape)).squeeze(0)
    return out, masks.gather(0, pick.expand(1, *mask.shape)).squeeze(0)


def generate_negatives(words: Tensor, mask: Tensor, kind: str, generator: torch.Generator, *,
                       noise_std: float = 0.1, dropout_p: float = 0.1,
                       shuffled: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One generated negative per caption: words (B, L, D), mask (B, L) bool -> (words (B, L', D), mask (B, L')).

    `shuffled`: the projected word features and mask of each caption's word-shuffled text, needed by
    `shuffle` and `mixture` (the only kind whose mask may differ from the caption's: re-tokenised text).
    """
    mask = mask.bool()
    if kind in ("shuffle", "mixture") and shuffled is None:
        raise ConfigError(f"ascl.negatives: {kind!r} needs the encoded word-shuffled captions (shuffled=...)")
    if kind == "gaussian":
        return gaussian_noise(words, mask, generator, noise_std), mask
    if kind == "shuffle":
        return shuffled[0].to(words.dtype), shuffled[1].bool()
    if kind == "cutoff":
        return cutoff(words, mask, generator), mask
    if kind == "dropout":
        return dropout(words, mask, generator, dropout_p), mask
    if kind == "mixture":
        return mixture(words, mask, generator, shuffled, noise_std, dropout_p)
    raise ConfigError(f"ascl.negatives: expected one of {', '.join(NEGATIVES[1:])}, got {kind!r}")


# ------------------------------------------------------------------------------------------ positives
def short_text(caption: str) -> str:
    """The first half of the caption's words (rounded up, so one-word captions stay whole)."""
    words = caption.split()
    return " ".join(words[: math.ceil(len(words) / 2)])


def long_text(caption: str, other: str) -> str:
    return f"{caption.strip()} {other.strip()}"


def _captions_of(split) -> tuple[Sequence[str], int]:
    if isinstance(split, (list, tuple)):
        return split, 5
    return split.captions, int(getattr(split, "captions_per_image", 5))


def long_partners(n_captions: int, captions_per_image: int, seed: int = 0) -> np.ndarray:
    """For each caption j, another caption of the same image (uniform among the other ones), from `seed`."""
    cpi = captions_per_image
    if cpi < 2:
        raise DataError(f"ascl.positives 'long': needs at least 2 captions per image, the split has {cpi}")
    if n_captions % cpi:
        raise DataError(f"ascl.positives 'long': {n_captions} captions is not a multiple of {cpi} per image")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    j = np.arange(n_captions)
    offset = rng.integers(1, cpi, size=n_captions)
    return (j // cpi) * cpi + (j % cpi + offset) % cpi


def generated_positive_texts(split, kind: str, seed: int = 0, captions_per_image: int | None = None) -> list[str]:
    """One generated positive text per caption of `split` (a PrecompSplit, or a list of captions).

    kind: 'long' (caption + another caption of the same image, the partner drawn from `seed`), 'short' (first
    half of its words), or 'both' (long or short per caption, drawn from `seed`). Deterministic in `seed`.
    """
    captions, cpi = _captions_of(split)
    cpi = captions_per_image or cpi
    if kind == "short":
        return [short_text(c) for c in captions]
    if kind not in ("long", "both"):
        raise ConfigError(f"ascl.positives: expected one of long, short, both, got {kind!r}")
    partner = long_partners(len(captions), cpi, seed)
    longs = [long_text(c, captions[p]) for c, p in zip(captions, partner)]
    if kind == "long":
        return longs
    pick_long = np.random.default_rng(np.random.SeedSequence([seed, 2])).random(len(captions)) < 0.5
    return [lt if pl else short_text(c) for c, lt, pl in zip(captions, longs, pick_long)]
