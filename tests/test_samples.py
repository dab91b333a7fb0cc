"""AsCL's generated negatives (word features; `shuffle` = word-shuffled texts) and positives (caption texts)."""
from types import SimpleNamespace

import numpy as np

import pytest
import torch

from itrbench.errors import ConfigError, DataError
from itrbench.methods.ascl.samples import (NEGATIVE_KINDS, cutoff, dropout, gaussian_noise, generate_negatives,
                              generated_positive_texts, long_partners, mixture, shuffled_text, shuffled_texts)

KINDS = [*NEGATIVE_KINDS, "mixture"]


def batch(b=40, length=9, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    words = torch.randn(b, length, dim, generator=g) + 3.0  # no exact zeros among real features
    words = words.masked_fill(~mask[..., None], 0.0)
    words[~mask] = torch.randn(int((~mask).sum()), dim, generator=g)  # padding holds junk: it must survive as is
    return words, mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def encoded_shuffles(words, mask):
    """Stand-in for the encoded word-shuffled captions: reversed real tokens (a re-encoded text in general)."""
    out = words.clone()
    for i in range(len(words)):
        n = int(mask[i].sum())
        out[i, :n] = words[i, :n].flip(0) + 0.5
    return out, mask.clone()


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "shuffle"])
def test_shape_padding_and_determinism(kind):
    words, mask = batch()
    shuf = encoded_shuffles(words, mask)
    out, out_mask = generate_negatives(words, mask, kind, gen(1), noise_std=0.3, dropout_p=0.3, shuffled=shuf)
    assert out.shape == words.shape and out.dtype == words.dtype and torch.equal(out_mask, mask)
    assert torch.equal(out[~mask], words[~mask])                     # padding untouched
    again = generate_negatives(words, mask, kind, gen(1), noise_std=0.3, dropout_p=0.3, shuffled=shuf)[0]
    assert torch.equal(out, again)
    other = generate_negatives(words, mask, kind, gen(2), noise_std=0.3, dropout_p=0.3, shuffled=shuf)[0]
    assert not torch.equal(out, other)
    assert not torch.equal(out[mask], words[mask])                   # it is a different caption
    assert torch.equal(words, batch()[0])                             # input not modified in place


def test_shuffle_negative_is_the_encoded_shuffled_text():
    words, mask = batch()
    sw, sm = encoded_shuffles(words, mask)
    sm[:, -1] = False                                                # re-tokenised text: its own mask
    out, out_mask = generate_negatives(words, mask, "shuffle", gen(), shuffled=(sw, sm))
    assert torch.equal(out, sw) and torch.equal(out_mask, sm)
    with pytest.raises(ConfigError, match="shuffled"):
        generate_negatives(words, mask, "shuffle", gen())
    with pytest.raises(ConfigError, match="shuffled"):
        generate_negatives(words, mask, "mixture", gen())


def test_shuffled_text_permutes_the_words():
    rng = np.random.default_rng(0)
    for caption in ["a man rides a red bike", "two dogs", "dog dog cat", "x y z w v u"]:
        for _ in range(20):
            out = shuffled_text(caption, rng)
            assert sorted(out.split()) == sorted(caption.split()) and out != caption
    assert shuffled_text("dog dog dog", rng) == "dog dog dog"       # no other order exists
    assert shuffled_text("single", rng) == "single"
    caps = [f"the {i} quick brown fox" for i in range(50)]
    assert shuffled_texts(caps, seed=0) == shuffled_texts(caps, seed=0)   # deterministic
    assert shuffled_texts(caps, seed=0) != shuffled_texts(caps, seed=1)


def test_gaussian_adds_noise_of_the_given_std():
    words, mask = batch(b=400, dim=32)
    delta = (gaussian_noise(words, mask, gen(), std=0.5) - words)[mask]
    assert delta.std().item() == pytest.approx(0.5, rel=0.05)
    assert abs(delta.mean().item()) < 0.02


def test_cutoff_zeroes_one_token_or_one_feature():
    words, mask = batch(b=200)
    out = cutoff(words, mask, gen(4))
    kinds = set()
    for i in range(len(words)):
        zero = (out[i] == 0) & mask[i][:, None]
        rows, cols = zero.all(1) & mask[i], zero[mask[i]].all(0)
        changed = out[i] != words[i]
        if rows.sum() == 1 and changed.sum() == words.shape[2]:
            kinds.add("token")
            assert changed[rows].all()
        else:
            assert cols.sum() == 1 and changed.sum() == mask[i].sum(), i
            kinds.add("feature")
    assert kinds == {"token", "feature"}


def test_dropout_drops_with_p_and_rescales():
    words, mask = batch(b=300, dim=32)
    out = dropout(words, mask, gen(5), p=0.25)
    real_in, real_out = words[mask], out[mask]
    dropped = real_out == 0
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert torch.allclose(real_out[~dropped], real_in[~dropped] / 0.75)
    with pytest.raises(ConfigError):
        dropout(words, mask, gen(), p=1.0)


def classify(orig, shuf, out, mask, out_mask, p):
    """Which negative produced one caption's output (None if none fits)."""
    if torch.equal(out, shuf[0]) and torch.equal(out_mask, shuf[1]):
        return "shuffle"
    width = len(mask)
    if out_mask[width:].any() or not torch.equal(out_mask[:width], mask) or out[width:].any():
        return None                                                  # the other kinds keep the caption's mask
    out = out[:width]
    real, got = orig[mask], out[mask]
    diff = got != real
    if (got[diff] == 0).all() and (diff.all(1).sum() == 1 or diff.all(0).sum() == 1):
        if diff.sum() in (real.shape[1], real.shape[0]):
            return "cutoff"
    kept = got != 0
    if torch.allclose(got[kept], real[kept] / (1 - p)):
        return "dropout"
    if diff.all():
        return "gaussian"
    return None


def test_mixture_uses_each_kind_per_caption():
    words, mask = batch(b=120, length=6, dim=8)
    sw, sm = encoded_shuffles(words, mask)
    sw, sm = torch.cat([sw, torch.randn(120, 2, 8)], 1), torch.cat([sm, torch.zeros(120, 2, dtype=torch.bool)], 1)
    sm[::3, 6] = True                                                # some shuffles are a token longer
    out, out_mask = mixture(words, mask, gen(6), (sw, sm), std=0.3, p=0.3)
    assert out.shape == (120, 8, 8) and out_mask.shape == (120, 8)
    kinds = [classify(words[i], (sw[i], sm[i]), out[i], mask[i], out_mask[i], 0.3) for i in range(len(words))]
    assert None not in kinds
    assert set(kinds) == set(NEGATIVE_KINDS)


def test_unknown_negative_kind():
    words, mask = batch()
    with pytest.raises(ConfigError, match="ascl.negatives"):
        generate_negatives(words, mask, "swap", gen())


CAPTIONS = [f"image {i} caption {j} has some words here" for i in range(4) for j in range(5)]


def test_short_positive_is_the_first_half_of_the_words():
    caps = ["a b c d", "one two three", "single", "x y"]
    assert generated_positive_texts(caps, "short") == ["a b", "one two", "single", "x"]


def test_long_positive_appends_another_caption_of_the_same_image():
    split = SimpleNamespace(captions=CAPTIONS, captions_per_image=5)
    longs = generated_positive_texts(split, "long", seed=0)
    partner = long_partners(len(CAPTIONS), 5, seed=0)
    for j, text in enumerate(longs):
        p = int(partner[j])
        assert p != j and p // 5 == j // 5
        assert text == f"{CAPTIONS[j]} {CAPTIONS[p]}"
    assert longs == generated_positive_texts(split, "long", seed=0)           # deterministic
    assert any(a != b for a, b in zip(longs, generated_positive_texts(split, "long", seed=1)))


def test_both_mixes_long_and_short():
    split = SimpleNamespace(captions=CAPTIONS, captions_per_image=5)
    both = generated_positive_texts(split, "both", seed=0)
    longs = generated_positive_texts(split, "long", seed=0)
    shorts = generated_positive_texts(split, "short", seed=0)
    picks = ["long" if b == lt else "short" if b == st else None for b, lt, st in zip(both, longs, shorts)]
    assert None not in picks and set(picks) == {"long", "short"}


def test_long_needs_several_captions_per_image():
    with pytest.raises(DataError, match="captions per image"):
        generated_positive_texts(SimpleNamespace(captions=["a", "b"], captions_per_image=1), "long")
    with pytest.raises(ConfigError):
        generated_positive_texts(CAPTIONS, "medium")
