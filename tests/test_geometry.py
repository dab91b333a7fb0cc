"""AsCL Fig. 4 measures against a literal double loop over pairs."""
import itertools
import math

import numpy as np
import pytest
import torch

from itrbench.errors import DataError
from itrbench.methods.ascl.geometry import alignment_uniformity, pairwise_stats


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(img, cap, cpi, t=2.0):
    v, w = unit(img.astype(np.float64)), unit(cap.astype(np.float64))
    it = [np.linalg.norm(v[j // cpi] - w[j]) for j in range(len(w))]
    tt = [np.linalg.norm(w[i * cpi + a] - w[i * cpi + b])
          for i in range(len(v)) for a, b in itertools.combinations(range(cpi), 2)]

    def spread(x):
        d = np.array([np.linalg.norm(x[i] - x[j]) for i, j in itertools.combinations(range(len(x)), 2)])
        return d.mean(), d.var(), math.log(np.mean(np.exp(-t * d ** 2)))

    return np.mean(it), np.mean(tt), spread(v), spread(w), np.mean(np.square(it))


def test_matches_literal_reference_with_small_blocks():
    rng = np.random.default_rng(0)
    img, cap = rng.normal(size=(7, 5)), rng.normal(size=(21, 5))
    got = alignment_uniformity(torch.tensor(img), torch.tensor(cap), captions_per_image=3)
    it, tt, (im, iv, il), (tm, tv, tl), align = reference(img, cap, 3)
    assert got["alignment"]["image_text"] == pytest.approx(it, rel=1e-5)
    assert got["alignment"]["text_text"] == pytest.approx(tt, rel=1e-5)
    assert got["uniformity"]["image"]["mean"] == pytest.approx(im, rel=1e-5)
    assert got["uniformity"]["image"]["var"] == pytest.approx(iv, rel=1e-4, abs=1e-7)
    assert got["uniformity"]["text"]["mean"] == pytest.approx(tm, rel=1e-5)
    assert got["uniformity"]["text"]["var"] == pytest.approx(tv, rel=1e-4, abs=1e-7)
    assert got["wang_isola"]["uniform_image"] == pytest.approx(il, rel=1e-5)
    assert got["wang_isola"]["uniform_text"] == pytest.approx(tl, rel=1e-5)
    assert got["wang_isola"]["align"] == pytest.approx(align, rel=1e-5)
    # streaming over row blocks gives the same numbers as one block
    small = pairwise_stats(torch.tensor(cap), block=4)
    assert small["mean"] == pytest.approx(tm, rel=1e-5) and small["pairs"] == 21 * 20 // 2
    assert small["log_mean_exp"] == pytest.approx(tl, rel=1e-5)


def test_hand_computed_geometry():
    # two orthogonal images; each image's captions equal to it -> perfect alignment, distance sqrt(2) between images
    img = torch.eye(2)
    cap = img.repeat_interleave(2, 0)
    got = alignment_uniformity(img, cap, captions_per_image=2)
    assert got["alignment"]["image_text"] == pytest.approx(0.0, abs=1e-6)
    assert got["alignment"]["text_text"] == pytest.approx(0.0, abs=1e-6)
    assert got["uniformity"]["image"]["mean"] == pytest.approx(math.sqrt(2))
    assert got["uniformity"]["image"]["var"] == pytest.approx(0.0, abs=1e-6)
    # texts: 6 pairs, 2 at distance 0 and 4 at sqrt(2)
    assert got["uniformity"]["text"]["mean"] == pytest.approx(4 * math.sqrt(2) / 6)
    assert got["wang_isola"]["uniform_text"] == pytest.approx(math.log((2 + 4 * math.exp(-4)) / 6))


def test_caption_count_must_match():
    with pytest.raises(DataError, match="expected 5 per image"):
        alignment_uniformity(torch.randn(3, 4), torch.randn(14, 4))
