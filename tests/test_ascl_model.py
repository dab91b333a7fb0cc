"""The AsCL model: scores, batch invariance, every Table II variant's loss, generated positives, learning."""
import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itrbench.config import validate
from itrbench.errors import ConfigError
from itrbench.methods.ascl.model import AsCL
from itrbench.models.base import ModelContext, build_model
from leakcheck import assert_batch_invariant
from learncheck import training_losses

IMG_DIM, TXT_DIM, GLOB_DIM, K, L = 10, 12, 8, 4, 7


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: torch's intra-op threads only add barrier waits (badly so on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(**ascl):
    return validate({"method": "ascl", "seed": 0, "model": {"embed_dim": 16, "image_mlp": True}, "ascl": ascl})


def context(global_dim=GLOB_DIM, **kw):
    return ModelContext(image_dim=IMG_DIM, text_dim=TXT_DIM, global_dim=global_dim, **kw)


def make_batch(n=8, seed=0, with_global=True, pos=False):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n, K, IMG_DIM, generator=g)
    lengths = torch.randint(2, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    mix = torch.randn(IMG_DIM, TXT_DIM, generator=g)
    # captions: noisy views of their image's regions, so there is something to learn
    picks = torch.randint(0, K, (n, L), generator=g)
    tokens = torch.stack([regions[i, picks[i]] for i in range(n)]) @ mix + 0.5 * torch.randn(n, L, TXT_DIM, generator=g)
    tokens = tokens * mask[..., None]
    out = {"regions": regions, "tokens": tokens, "token_mask": mask, "image_index": torch.arange(n),
           "caption_index": torch.arange(n), "captions": [f"caption {i}" for i in range(n)]}
    if with_global:
        out["global"] = torch.randn(n, GLOB_DIM, generator=g)
    # stand-ins for the encoded word-shuffled captions (what the `shuffle` negative reads)
    out["shuf_tokens"], out["shuf_token_mask"] = tokens.flip(1) + 0.2, mask.flip(1)
    if pos:
        out["pos_tokens"] = tokens[:, : L - 2] + 0.1
        out["pos_token_mask"] = mask[:, : L - 2] | (torch.arange(L - 2) < 1)
        out["pos_shuf_tokens"], out["pos_shuf_token_mask"] = out["pos_tokens"].flip(1), out["pos_token_mask"].flip(1)
    return out


def test_registered_and_built_from_config():
    model = build_model(config(), context())
    assert isinstance(model, AsCL) and model.method_name == "ascl"


@pytest.mark.parametrize("heads", [1, 2])
def test_score_equals_reference_loop_and_is_batch_invariant(heads):
    torch.manual_seed(0)
    model = AsCL(config(heads=heads), context()).eval()
    b = make_batch(9)
    with torch.no_grad():
        img, cap = model.embed_images(b), model.embed_captions(b)
        fast, ref = model.score(img, cap), model.reference_score(img, cap)
    assert fast.shape == (9, 9)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert torch.equal(cap["words"][~cap["mask"]], torch.zeros_like(cap["words"][~cap["mask"]]))
    assert_batch_invariant(model, img, cap)


def test_without_fusion_is_cosine_of_mean_pooled_embeddings():
    torch.manual_seed(0)
    model = AsCL(config(fusion=False), context()).eval()
    assert model.fusion is None
    b = make_batch(6)
    with torch.no_grad():
        img, cap = model.embed_images(b), model.embed_captions(b)
        v = model.regions(b["regions"]).mean(1)
        words = model.words(b["tokens"])
        w = torch.stack([words[i][b["token_mask"][i]].mean(0) for i in range(6)])
        expected = torch.nn.functional.cosine_similarity(v[:, None], w[None], dim=-1)
        assert torch.allclose(model.score(img, cap), expected, atol=1e-6)
    assert_batch_invariant(model, img, cap)


def test_missing_global_feature_falls_back_to_mean_region():
    model = AsCL(config(), context(global_dim=None)).eval()
    b = make_batch(5, with_global=False)
    with torch.no_grad():
        img = model.embed_images(b)
        assert torch.allclose(img["glob"], model.global_proj(b["regions"].mean(1)))
        assert model.score(img, model.embed_captions(b)).shape == (5, 5)


VARIANTS = {
    "AsCL": {},
    "w/o Pos": {"positives": "none"},
    "w/o Neg": {"negatives": "none"},
    "w/o P&N": {"positives": "none", "negatives": "none"},
    "w/o MF": {"fusion": False},
    "w triplet": {"loss": "triplet"},
    **{f"neg {k}": {"negatives": k} for k in ("gaussian", "shuffle", "cutoff", "dropout")},
    "pos long": {"positives": "long"},
    "heads 2": {"heads": 2},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_a_step(name):
    torch.manual_seed(0)
    model = AsCL(config(**VARIANTS[name]), context())
    loss, parts = model.training_loss(make_batch(8, pos=True), epoch=0)
    assert torch.isfinite(loss) and parts["loss"] == pytest.approx(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if VARIANTS[name].get("positives") == "none":
        assert "l_pos" not in parts and parts["loss"] == pytest.approx(parts["l_i"])
    else:
        assert parts["loss"] == pytest.approx(0.5 * parts["l_i"] + 0.5 * parts["l_pos"], rel=1e-5)


def test_loss_decreases_in_a_short_training_run():
    torch.manual_seed(0)
    model = AsCL(config(tau=0.1), context())
    losses = training_losses(model, [make_batch(16, seed=s, pos=True) for s in range(4)], steps=48, lr=3e-3)
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.6 * first, (first, last)


# ---- generated positives made by the model itself (frozen mode: a token cache per generated text set) ----
def fake_features(texts, length=L):
    """Deterministic token features of a text: one vector per word, seeded by the word."""
    feats = np.zeros((len(texts), length, TXT_DIM), np.float16)
    lens = np.zeros(len(texts), np.int32)
    for i, t in enumerate(texts):
        words = t.split()[:length]
        for j, w in enumerate(words):
            feats[i, j] = np.random.default_rng(zlib.crc32(w.encode())).normal(size=TXT_DIM)
        lens[i] = len(words)
    return feats, lens


def test_frozen_mode_positives_come_from_the_token_cache():
    captions = [f"w{i} a{i % 3} b{i % 5} c d" for i in range(10)]
    calls = []

    def factory(tag, texts):
        calls.append((tag, list(texts)))
        return fake_features(texts)

    ctx = context(train_split=SimpleNamespace(captions=captions, captions_per_image=5), token_cache_factory=factory,
                  n_train_captions=10)
    model = AsCL(config(positives="short"), ctx)
    b = make_batch(4)
    b["caption_index"] = torch.tensor([7, 0, 3, 9])
    tokens, mask = model._positive_tokens(b)
    feats, lens = fake_features([" ".join(captions[i].split()[:3]) for i in (7, 0, 3, 9)])
    assert [c[0] for c in calls] == ["caps", "ascl-short-n10"]   # the plain training cache, then the new texts
    assert mask.sum(1).tolist() == lens.tolist() == [3, 3, 3, 3]
    assert torch.allclose(tokens[:, :3], torch.from_numpy(feats[:, :3].astype(np.float32)))
    model._positive_tokens(b)
    assert len(calls) == 2  # encoded once, then reused

    both = AsCL(config(positives="both"), ctx)
    b["caption_index"] = torch.arange(10)
    tokens, mask = both._positive_tokens(b | {"regions": torch.zeros(10, K, IMG_DIM)})
    assert set(c[0] for c in calls) == {"caps", "ascl-short-n10", "ascl-long-s0-n10"}
    assert set(mask.sum(1).tolist()) == {3, 7}  # short: 3 words; long: 10 words, cut at the cache width L


def test_finetune_mode_positives_are_texts():
    class Encoder(torch.nn.Module):
        def forward(self, captions):
            feats, lens = fake_features(captions)
            return torch.from_numpy(feats.astype(np.float32)), torch.arange(L)[None] < torch.from_numpy(lens)[:, None]

    captions = [f"w{i} x y z" for i in range(5)]
    ctx = context(train_split=SimpleNamespace(captions=captions, captions_per_image=5), text_encoder=Encoder())
    model = AsCL(config(positives="long"), ctx)
    b = make_batch(2)
    b["caption_index"] = torch.tensor([1, 4])
    tokens, mask = model._positive_tokens(b)
    assert mask.sum(1).tolist() == [7, 7]  # 8 words, cut at L = 7 by the fake encoder
    first = model._texts("long")[1]
    assert first.startswith("w1 x y z w") and first.split()[4] != "w1"


def test_missing_positive_source_is_a_config_error():
    model = AsCL(config(positives="short"), context())
    with pytest.raises(ConfigError, match="ascl.positives"):
        model.training_loss(make_batch(4), epoch=0)


def test_sampler_state_round_trip_reproduces_the_next_step():
    torch.manual_seed(0)
    model = AsCL(config(), context())
    b = make_batch(8, pos=True)
    model.training_loss(b, 0)
    state = model.extra_state()
    nxt = model.training_loss(b, 0)[0].item()
    model.load_extra_state(state)
    assert model.training_loss(b, 0)[0].item() == nxt


def test_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="ascl.heads"):
        AsCL(config(heads=3), context())


def test_schema_rejects_unknown_keys_and_values():
    with pytest.raises(ConfigError, match="ascl"):
        config(temperature=0.1)
    with pytest.raises(ConfigError, match="positives"):
        config(positives="longer")


@pytest.mark.slow
def test_end_to_end_on_tiny_toy(tiny_run_config, tmp_path):
    """Trainer + evaluator with the frozen MiniLM cache: positives encoded through the run's text cache."""
    from itrbench.training import train_and_evaluate

    cfg = tiny_run_config(method="ascl", threads=1, data={"max_train_images": 40},
                          train={"epochs": 2, "batch_size": 40}, ascl={"tau": 0.1, "positives": "short"})
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics["protocols"]["f30k_1k"]["rsum"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval_settings"] == {"scorer": "cross_attention", "compile": False, "block_images": 32,
                                      "block_captions": 64}
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    means = [row["epoch_mean"]["loss"] for row in log if "epoch_mean" in row]
    assert len(means) == 2 and means[1] < means[0]
    assert list(Path(cfg["text"]["cache_dir"]).glob("**/train.ascl-short-n200.*.npy"))

    # Fig. 4 measures of the trained run, through the CLI the pipeline calls
    from itrbench.cli import main

    out = tmp_path / "au.json"
    assert main(["alignment-uniformity", "--run", str(tmp_path / "run"), "--out", str(out)]) == 0
    au = json.loads(out.read_text())
    assert au["n_images"] == 40 and au["n_captions"] == 200 and au["embedding"] == "pooled"
    assert 0 < au["alignment"]["image_text"] < 2 and 0 < au["uniformity"]["text"]["mean"] < 2


def test_generated_caches_encode_each_new_text_once_and_only_the_trained_captions():
    """Frozen mode: a generated text equal to a training caption reads that caption's row of the plain cache; the
    generated cache holds each remaining distinct text once, for the captions the run trains on only."""
    captions = (["a b", "a b c d", "x y", "x y z", "k"] + [f"p{i} q r s" for i in range(5)]
                + [f"u{i} v w" for i in range(5)])
    calls = []

    def factory(tag, texts):
        calls.append((tag, list(texts)))
        return fake_features(texts)

    split = SimpleNamespace(captions=captions, captions_per_image=5)
    model = AsCL(config(positives="short"), context(train_split=split, token_cache_factory=factory, n_train_captions=10))
    b = make_batch(10)
    b["caption_index"] = torch.arange(10)
    tokens, mask = model._positive_tokens(b)
    generated = dict(calls)["ascl-short-n10"]
    # short("a b c d") = "a b" and short("x y z") = "x y" are captions; short("k") = "k" is itself;
    # "p0 q" .. "p4 q" and "a" and "x" are new; the u-captions (images past the cap) are not generated at all
    assert generated == ["a", "x", *[f"p{i} q" for i in range(5)]]
    want, lens = fake_features([" ".join(c.split()[: -(-len(c.split()) // 2)]) for c in captions[:10]])
    assert mask.sum(1).tolist() == lens.tolist()
    assert torch.allclose(tokens, torch.from_numpy(want[:, : tokens.shape[1]].astype(np.float32)))
    # shuffles: the words of each trained caption in another order; single-distinct-word captions are themselves
    shuf = AsCL(config(negatives="shuffle", positives="none"), context(train_split=split, token_cache_factory=factory,
                                                                       n_train_captions=10))
    texts = shuf._texts("shuffle")
    assert len(texts) == 10 and texts[4] == "k"
    assert all(t != c and sorted(t.split()) == sorted(c.split()) for t, c in zip(texts, captions) if len(set(c.split())) > 1)
    plain = {k: v for k, v in b.items() if not k.startswith("shuf_")}   # no stand-ins: from the cache
    shuf._generated_tokens(plain, "shuf_", ["shuffle"] * 10)
    assert sorted(dict(calls)["ascl-shuffle-s0-n10"]) == sorted(t for t in texts if t not in captions)


def test_shuffle_negative_changes_the_fused_score():
    """The `shuffle` negative is the caption's words in another order, through the (contextual) text encoder: its
    fused score differs from the caption's, so α compares two different numbers."""
    from itrbench.text import TextEncoder

    encoder = TextEncoder("minilm", 16, trainable=False)
    captions = ["a man rides a red bike down the street", "two dogs play with a ball on grass"] * 5
    split = SimpleNamespace(captions=captions, captions_per_image=5)
    cfg = validate({"method": "ascl", "seed": 0, "model": {"embed_dim": 16}, "ascl": {"negatives": "shuffle"}})
    torch.manual_seed(0)
    model = AsCL(cfg, ModelContext(image_dim=IMG_DIM, text_dim=encoder.hidden_size, global_dim=GLOB_DIM,
                                   text_encoder=encoder, train_split=split, n_train_captions=10)).eval()
    b = make_batch(2)
    b["caption_index"] = torch.tensor([0, 1])
    with torch.no_grad():
        img = model.embed_images(b)
        words, mask = model._project_words(*model.text_side({"captions": captions[:2]}))
        shuf = model._project_words(*model._generated_tokens(b, "shuf_", ["shuffle"] * 2))
        neg_words, neg_mask = model._negatives(words, mask, shuf)
        diff = model._train_scores(img, words, mask) - model._train_scores(img, neg_words, neg_mask)
    assert model._texts("shuffle")[0] != captions[0]
    assert diff.abs().min().item() > 1e-4, diff     # far outside α's 1e-6 tie band
