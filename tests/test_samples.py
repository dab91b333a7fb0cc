"""AsCL's generated negatives (word features) and positives (caption texts)."""
from types import SimpleNamespace

import pytest
import torch

from itrbench.errors import ConfigError, DataError
from itrbench.samples import (NEGATIVE_KINDS, cutoff, dropout, gaussian_noise, generate_negatives,
                              generated_positive_texts, long_partners, mixture, token_shuffle)

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


@pytest.mark.parametrize("kind", KINDS)
def test_shape_padding_and_determinism(kind):
    words, mask = batch()
    out = generate_negatives(words, mask, kind, gen(1), noise_std=0.3, dropout_p=0.3)
    assert out.shape == words.shape and out.dtype == words.dtype
    assert torch.equal(out[~mask], words[~mask])                     # padding untouched
    assert torch.equal(out, generate_negatives(words, mask, kind, gen(1), noise_std=0.3, dropout_p=0.3))
    assert not torch.equal(out, generate_negatives(words, mask, kind, gen(2), noise_std=0.3, dropout_p=0.3))
    assert not torch.equal(out[mask], words[mask])                   # it is a different caption
    assert torch.equal(words, batch()[0])                             # input not modified in place


def test_gaussian_adds_noise_of_the_given_std():
    words, mask = batch(b=400, dim=32)
    delta = (gaussian_noise(words, mask, gen(), std=0.5) - words)[mask]
    assert delta.std().item() == pytest.approx(0.5, rel=0.05)
    assert abs(delta.mean().item()) < 0.02


def test_shuffle_permutes_each_captions_real_tokens():
    words, mask = batch()
    out = token_shuffle(words, mask, gen(3))
    moved = 0
    for i in range(len(words)):
        real, got = words[i][mask[i]], out[i][mask[i]]
        # same multiset of rows: sort rows lexicographically by their first feature (continuous, distinct)
        assert torch.equal(real[real[:, 0].argsort()], got[got[:, 0].argsort()])
        moved += int(not torch.equal(real, got))
    assert moved > len(words) // 2


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


def classify(orig, out, mask, p):
    """Which negative produced one caption's output (None if none fits)."""
    real, got = orig[mask], out[mask]
    if torch.equal(real[real[:, 0].argsort()], got[got[:, 0].argsort()]):
        return "shuffle"
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
    out = mixture(words, mask, gen(6), std=0.3, p=0.3)
    kinds = [classify(words[i], out[i], mask[i], 0.3) for i in range(len(words))]
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
