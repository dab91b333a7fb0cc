"""Evaluation: ranks, R@K, protocols and model-level encode/score against slow obviously-correct references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itrbench import evaluation as ev
from itrbench.errors import ConfigError, DataError


# ------------------------------------------------------------------------------ reference (VSE++ loops)
def _order(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Descending argsort; among equal scores negatives come first (the documented pessimistic tie rule).
    Without ties this is exactly VSE++'s `np.argsort(d)[::-1]`."""
    return np.lexsort((positive, -scores))


def ref_i2t(sims, cpi=5):
    n_img = sims.shape[0]
    ranks = np.zeros(n_img)
    for index in range(n_img):
        d = sims[index]
        positive = (np.arange(d.size) // cpi) == index
        inds = _order(d, positive)
        rank = 1e20
        for i in range(cpi * index, cpi * index + cpi, 1):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    return ranks


def ref_t2i(sims, cpi=5):
    n_cap = sims.shape[1]
    ranks = np.zeros(n_cap)
    for j in range(n_cap):
        d = sims[:, j]
        positive = np.arange(d.size) == j // cpi
        inds = _order(d, positive)
        ranks[j] = np.where(inds == j // cpi)[0][0]
    return ranks


def ref_metrics(sims, cpi=5):
    out = {}
    for name, r in (("i2t", ref_i2t(sims, cpi)), ("t2i", ref_t2i(sims, cpi))):
        r1 = 100.0 * len(np.where(r < 1)[0]) / len(r)
        r5 = 100.0 * len(np.where(r < 5)[0]) / len(r)
        r10 = 100.0 * len(np.where(r < 10)[0]) / len(r)
        out.update({f"{name}_r1": r1, f"{name}_r5": r5, f"{name}_r10": r10,
                    f"{name}_medr": np.floor(np.median(r)) + 1, f"{name}_meanr": r.mean() + 1})
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def ref_coco_1k(sims, cpi=5):
    n = sims.shape[0] // 5
    folds = [ref_metrics(sims[i * n:(i + 1) * n, i * n * cpi:(i + 1) * n * cpi], cpi) for i in range(5)]
    avg = {k: np.mean([f[k] for f in folds]) for k in folds[0]}
    avg["rsum"] = sum(avg[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return avg


def assert_metrics(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
        "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"]


def _sims(n_img, cpi, seed, ties=False, signal=1.5):
    """Random sims with some signal on the positives (so R@K is neither 0 nor 100); ties: coarse rounding."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n_img, n_img * cpi))
    s[np.arange(n_img * cpi) // cpi, np.arange(n_img * cpi)] += signal
    if ties:
        s = np.round(s * 2) / 2  # about 10 distinct values: many positive/negative ties
    return s.astype(np.float32)


# ------------------------------------------------------------------------------------------ hand example
HAND = np.array([
    [0.9, 0.1, 0.2, 0.3, 0.4, 0.95, 0.5, 0.6, 0.7, 0.8],
    [0.1, 0.2, 0.3, 0.4, 0.4, 0.6, 0.7, 0.8, 0.9, 0.55],
], dtype=np.float32)
# i2t: image 0 best own caption 0.9, beaten by caption 5 (0.95) -> rank 1; image 1 best own 0.9 -> rank 0.
# t2i: columns 0..9, own image vs the other: 0.9>0.1 ->0, 0.1<0.2 ->1, 0.2<0.3 ->1, 0.3<0.4 ->1,
#      0.4=0.4 (tie, counts against) ->1, 0.6<0.95 ->1, 0.7>0.5 ->0, 0.8>0.6 ->0, 0.9>0.7 ->0, 0.55<0.8 ->1.
HAND_EXPECTED = {
    "i2t_r1": 50.0, "i2t_r5": 100.0, "i2t_r10": 100.0,
    "t2i_r1": 40.0, "t2i_r5": 100.0, "t2i_r10": 100.0,
    "rsum": 490.0,
    "i2t_medr": 1.0, "i2t_meanr": 1.5,   # ranks [1, 0]: median 0.5 -> floor 0 + 1; mean 0.5 + 1
    "t2i_medr": 2.0, "t2i_meanr": 1.6,   # ranks four 0s, six 1s: median 1 -> 2; mean 0.6 + 1
}


def test_hand_example_exact_numbers():
    got = ev.recall_at_k(HAND)
    assert list(got) == KEYS
    assert_metrics(got, HAND_EXPECTED)
    i2t, t2i = ev.retrieval_ranks(HAND)
    assert i2t.tolist() == [1, 0]
    assert t2i.tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 1]


def test_hand_example_other_ks_and_torch_input():
    got = ev.recall_at_k(torch.from_numpy(HAND), ks=(1, 2))
    assert got["i2t_r2"] == 100.0 and got["t2i_r2"] == 100.0
    assert got["rsum"] == pytest.approx(50 + 100 + 40 + 100)
    assert "i2t_r5" not in got


def test_hand_example_protocols():
    # whole-matrix protocols on 2 images; coco_1k needs n_images divisible by 5
    assert_metrics(ev.evaluate_protocol(HAND, "f30k_1k"), HAND_EXPECTED)
    assert_metrics(ev.evaluate_protocol(HAND, "coco_5k"), HAND_EXPECTED)
    with pytest.raises(DataError, match="divisible by 5"):
        ev.evaluate_protocol(HAND, "coco_1k")


# ------------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n_img,cpi", [(60, 5), (37, 5), (80, 1), (23, 3)])
def test_recall_matches_vsepp_loops(n_img, cpi, ties):
    s = _sims(n_img, cpi, seed=n_img + cpi, ties=ties)
    got = ev.recall_at_k(s, captions_per_image=cpi)
    assert_metrics(got, ref_metrics(s, cpi))
    i2t, t2i = ev.retrieval_ranks(s, cpi, block=7)  # many tiles, ragged last ones
    np.testing.assert_array_equal(i2t, ref_i2t(s, cpi))
    np.testing.assert_array_equal(t2i, ref_t2i(s, cpi))


def test_metrics_not_trivial():
    # guard against a reference that always agrees because everything is 0 or 100
    m = ev.recall_at_k(_sims(60, 5, seed=1))
    assert 0 < m["i2t_r1"] < 100 and 0 < m["t2i_r1"] < 100 and m["t2i_medr"] > 1


@pytest.mark.parametrize("ties", [False, True])
def test_coco_1k_five_fold_average(ties):
    s = _sims(50, 5, seed=3, ties=ties)
    assert_metrics(ev.evaluate_protocol(s, "coco_1k"), ref_coco_1k(s))
    assert_metrics(ev.evaluate_protocol(s, "coco_5k"), ref_metrics(s))
    assert_metrics(ev.evaluate_protocol(s, "f30k_1k"), ref_metrics(s))


def test_coco_1k_uses_only_diagonal_blocks_and_sums_averaged_recalls():
    s = _sims(50, 5, seed=4)
    base = ev.evaluate_protocol(s, "coco_1k")
    # captions outside an image's fold must not matter for coco_1k (but do for coco_5k)
    s2 = s.copy()
    for f in range(5):
        s2[f * 10:(f + 1) * 10, :f * 50] = 100.0
        s2[f * 10:(f + 1) * 10, (f + 1) * 50:] = 100.0
    assert_metrics(ev.evaluate_protocol(s2, "coco_1k"), base)
    assert ev.evaluate_protocol(s2, "coco_5k")["i2t_r10"] == 0.0
    folds = [ev.recall_at_k(s[f * 10:(f + 1) * 10, f * 50:(f + 1) * 50]) for f in range(5)]
    for k in KEYS:
        assert base[k] == pytest.approx(np.mean([m[k] for m in folds]))
    assert base["rsum"] == pytest.approx(sum(base[k] for k in KEYS[:6]))


def test_one_to_one_protocol_inferred():
    s = _sims(40, 1, seed=5)
    assert_metrics(ev.evaluate_protocol(s, "f30k_1k"), ref_metrics(s, 1))
    assert_metrics(ev.evaluate_protocol(s, "coco_1k"), ref_coco_1k(s, 1))


# --------------------------------------------------------------------------------------------- errors
def test_bad_inputs():
    with pytest.raises(ConfigError, match="coco_2k"):
        ev.evaluate_protocol(HAND, "coco_2k")
    with pytest.raises(DataError, match="n_captions"):
        ev.recall_at_k(np.zeros((3, 14)))
    with pytest.raises(DataError, match="multiple of n_images"):
        ev.evaluate_protocol(np.zeros((3, 14)), "coco_5k")
    with pytest.raises(DataError, match="2-D"):
        ev.recall_at_k(np.zeros(10))
    bad = HAND.copy()
    bad[1, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ev.recall_at_k(bad)
    with pytest.raises(DataError, match="NaN or inf"):
        ev.dual_encoder_ranks(torch.full((2, 4), float("nan")), torch.zeros(10, 4))


# ------------------------------------------------------------------------------------ fused dual path
@pytest.mark.parametrize("protocol", ev.PROTOCOLS)
def test_evaluate_embeddings_equals_materialised(protocol):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    cap = torch.nn.functional.normalize(img.repeat_interleave(5, 0) + 0.8 * torch.randn(250, 16, generator=g), dim=1)
    want = ref_coco_1k((img @ cap.T).numpy()) if protocol == "coco_1k" else ref_metrics((img @ cap.T).numpy())
    assert_metrics(ev.evaluate_embeddings(img, cap, protocol, block=7), want)
    assert_metrics(ev.evaluate_embeddings(img.numpy(), cap.numpy(), protocol), want)


def test_dual_ranks_with_duplicate_embeddings():
    # exact duplicates give exact ties; the fused path must apply the same pessimistic rule
    g = torch.Generator().manual_seed(1)
    img = torch.randn(12, 8, generator=g)
    img[7] = img[2]
    cap = torch.randn(60, 8, generator=g)
    cap[31] = cap[4]
    s = (img @ cap.T).numpy()
    i2t, t2i = ev.dual_encoder_ranks(img, cap, 5, block=4)
    # reference on the matrix assembled from the fused path's own tile products
    np.testing.assert_array_equal(i2t, ref_i2t(s))
    np.testing.assert_array_equal(t2i, ref_t2i(s))


# ---------------------------------------------------------------------------------- model level
class FakeDual(torch.nn.Module):
    """Implements the RetrievalModel interface: images -> mean region projection; captions -> masked
    mean of per-token projections. Caption outputs keep variable-length token features so that
    concatenation has to pad; the score uses them, so wrong padding changes the numbers."""

    def __init__(self, d_img=6, d_txt=5, f=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wi = torch.nn.Parameter(torch.randn(d_img, f, generator=g))
        self.wt = torch.nn.Parameter(torch.randn(d_txt, f, generator=g))
        self.score_calls = 0

    def embed_images(self, batch):
        assert not torch.is_grad_enabled() and not self.training
        return {"emb": torch.nn.functional.normalize(batch["regions"].mean(1) @ self.wi, dim=-1)}

    def embed_captions(self, batch):
        assert not torch.is_grad_enabled()
        return {"tok": batch["tokens"] @ self.wt, "mask": batch["token_mask"]}

    def score(self, img, cap):
        self.score_calls += 1
        self.score_pairs = getattr(self, "score_pairs", 0) + len(img["emb"]) * len(cap["mask"])
        m = cap["mask"].unsqueeze(-1).float()
        # padded positions must be masked out (False) and zero
        assert torch.all(cap["tok"][~cap["mask"]] == 0)
        c = torch.nn.functional.normalize((cap["tok"] * m).sum(1) / m.sum(1), dim=-1)
        return img["emb"] @ c.T

    def training_loss(self, batch, epoch):
        raise NotImplementedError


def _fake_split(n_img=15, cpi=5, seed=0):
    rng = np.random.default_rng(seed)
    regions = torch.from_numpy(rng.standard_normal((n_img, 3, 6)).astype(np.float32))
    lengths = rng.integers(1, 9, size=n_img * cpi)
    tokens = [torch.from_numpy(rng.standard_normal((n, 5)).astype(np.float32)) for n in lengths]
    return regions, tokens


def _batches(regions, tokens, bs):
    def images():
        for a in range(0, len(regions), bs):
            yield {"regions": regions[a:a + bs], "image_index": torch.arange(a, min(a + bs, len(regions)))}

    def captions():
        for a in range(0, len(tokens), bs):
            part = tokens[a:a + bs]
            width = max(t.shape[0] for t in part)   # each batch padded to its own longest caption
            tok = torch.zeros(len(part), width, 5)
            mask = torch.zeros(len(part), width, dtype=torch.bool)
            for i, t in enumerate(part):
                tok[i, :len(t)] = t
                mask[i, :len(t)] = True
            yield {"tokens": tok, "token_mask": mask, "captions": ["x"] * len(part)}

    return images(), captions()


def _hand_sims(model, regions, tokens):
    """Each pair scored on its own, no batching or padding."""
    with torch.no_grad():
        img = torch.nn.functional.normalize(regions.mean(1) @ model.wi, dim=-1)
        cap = torch.stack([torch.nn.functional.normalize((t @ model.wt).mean(0), dim=-1) for t in tokens])
    return (img @ cap.T).numpy()


def test_encode_split_and_compute_sims_match_hand(monkeypatch):
    regions, tokens = _fake_split()
    model = FakeDual().train()
    seen = {}

    def fake_batches(split, batch_size, token_cache, max_images):
        seen.update(split=split, batch_size=batch_size, token_cache=token_cache, max_images=max_images)
        return _batches(regions, tokens, batch_size)

    monkeypatch.setattr(ev, "_split_batches", fake_batches)
    img, cap, secs = ev.encode_split(model, "SPLIT", device="cpu", batch_size=4, token_cache="TC")
    assert seen == {"split": "SPLIT", "batch_size": 4, "token_cache": "TC", "max_images": None}
    assert not model.training and secs >= 0
    assert img["emb"].shape == (15, 4)
    width = max(len(t) for t in tokens)
    assert cap["tok"].shape == (75, width, 4) and cap["mask"].dtype == torch.bool
    assert cap["mask"].sum(1).tolist() == [len(t) for t in tokens]

    sims, sim_secs = ev.compute_sims(model, img, cap, block_images=4, block_captions=7, device="cpu")
    want = _hand_sims(model, regions, tokens)
    assert sims.dtype == np.float32 and sims.shape == (15, 75) and sim_secs >= 0
    np.testing.assert_allclose(sims, want, atol=1e-5)
    assert model.score_calls == 1 + math.ceil(15 / 4) * math.ceil(75 / 7)  # warm-up + every block once
    # with blocks as large as the matrix, the warm-up is one small block, not a second pass over every pair
    model.score_calls = model.score_pairs = 0
    again, _ = ev.compute_sims(model, img, cap, device="cpu")
    np.testing.assert_allclose(again, sims, atol=1e-6)
    assert model.score_calls == 2
    assert model.score_pairs == 15 * 75 + 15 * min(75, ev._WARM_CAPTIONS)
    for p in ev.PROTOCOLS:
        assert_metrics(ev.evaluate_protocol(sims, p), ev.evaluate_protocol(want, p))


def test_evaluate_model(monkeypatch):
    regions, tokens = _fake_split(n_img=20, seed=2)
    model = FakeDual()
    monkeypatch.setattr(ev, "_split_batches", lambda split, bs, tc, mi: _batches(regions, tokens, bs))
    out = ev.evaluate_model(model, None, ["coco_1k", "coco_5k"], device="cpu", batch_size=6,
                            block_images=8, block_captions=33)
    want = _hand_sims(model, regions, tokens)
    assert set(out) == {"protocols", "similarity_seconds", "pairs_per_second", "encode_seconds",
                        "n_images", "n_captions"}
    assert (out["n_images"], out["n_captions"]) == (20, 100)
    assert out["pairs_per_second"] == pytest.approx(2000 / out["similarity_seconds"])
    assert_metrics(out["protocols"]["coco_1k"], ref_coco_1k(want))
    assert_metrics(out["protocols"]["coco_5k"], ref_metrics(want))
    with pytest.raises(ConfigError, match="bogus"):
        ev.evaluate_model(model, None, ["bogus"], device="cpu")


def test_concat_pads_bool_with_false_and_floats_with_zero():
    a = {"x": torch.ones(2, 3, 2), "m": torch.ones(2, 3, dtype=torch.bool), "v": torch.ones(2), "ids": ["a", "b"]}
    b = {"x": torch.ones(1, 5, 2), "m": torch.ones(1, 5, dtype=torch.bool), "v": torch.ones(1), "ids": ["c"]}
    out = ev.concat_outputs([a, b])
    assert out["x"].shape == (3, 5, 2) and out["x"][:2, 3:].abs().sum() == 0 and out["x"][2].min() == 1
    assert out["m"].tolist() == [[True] * 3 + [False] * 2] * 2 + [[True] * 5]
    assert out["v"].shape == (3,) and out["ids"] == ["a", "b", "c"]


def test_evaluate_model_on_a_real_precomp_split(tmp_path):
    """End to end through itrbench.data (open_split, iter_*_batches) with a frozen token cache."""
    from itrbench.data.precomp import open_split

    regions, tokens = _fake_split(n_img=15, seed=3)
    tokens = [t.half().float() for t in tokens]  # the cache stores float16
    folder = tmp_path / "toy-f30k_precomp"
    folder.mkdir()
    np.save(folder / "test_ims.npy", regions.numpy())
    (folder / "test_caps.txt").write_text("".join(f"caption number {j}\n" for j in range(75)))
    lengths = np.array([len(t) for t in tokens])
    feats = np.zeros((75, lengths.max(), 5), dtype=np.float16)
    for j, t in enumerate(tokens):
        feats[j, :len(t)] = t.numpy()
    split = open_split(tmp_path, "toy-f30k", "test")
    model = FakeDual()
    want = _hand_sims(model, regions, tokens)

    out = ev.evaluate_model(model, split, ["f30k_1k", "coco_1k"], device="cpu", batch_size=4,
                            token_cache=(feats, lengths), block_images=6, block_captions=20)
    assert (out["n_images"], out["n_captions"]) == (15, 75)
    assert_metrics(out["protocols"]["f30k_1k"], ref_metrics(want))
    assert_metrics(out["protocols"]["coco_1k"], ref_coco_1k(want))

    out = ev.evaluate_model(model, split, ["coco_5k"], device="cpu", token_cache=(feats, lengths), max_images=10)
    assert (out["n_images"], out["n_captions"]) == (10, 50)
    assert_metrics(out["protocols"]["coco_5k"], ref_metrics(want[:10, :50]))


def test_single_and_multi_worker_agree_and_threads_restored():
    s = _sims(45, 5, seed=6, ties=True)
    threads = torch.get_num_threads()
    multi = ev.retrieval_ranks(s, block=4)
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)
    try:
        single = ev.retrieval_ranks(s, block=4)
    finally:
        torch.set_num_threads(threads)
    for x, y, r in zip(multi, single, (ref_i2t(s), ref_t2i(s))):
        np.testing.assert_array_equal(x, r)
        np.testing.assert_array_equal(y, r)
