"""SCAN (methods/scan): each equation against a hand computation or a literal loop, the batched scorer against the
per-pair reference, batch invariance, the ensemble, the loss, and learning."""
import json
import math

import numpy as np
import pytest
import torch

from itrbench import methods
from itrbench.config import validate
from itrbench.errors import ConfigError
from itrbench.losses.triplet import btr_loss
from itrbench.methods.scan.attention import blocked_scores, pool, reference_pair, reference_scores
from itrbench.methods.scan.model import SCAN
from itrbench.models.base import ModelContext, build_model
from itrbench.models.encoders import l2norm
from leakcheck import assert_batch_invariant
from learncheck import training_losses

IMG_DIM, TXT_DIM, K, L = 10, 12, 5, 7
SETTINGS = [("t2i", "avg"), ("t2i", "lse"), ("i2t", "avg"), ("i2t", "lse")]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(seed=0, **scan):
    return validate({"method": "scan", "seed": seed, "model": {"embed_dim": 16}, "scan": scan})


def context():
    return ModelContext(image_dim=IMG_DIM, text_dim=TXT_DIM)


def make_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(n, K, IMG_DIM, generator=g)
    lengths = torch.randint(2, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    # words: noisy views of their image's regions through one fixed map, so there is something to learn
    mix = torch.randn(IMG_DIM, TXT_DIM, generator=torch.Generator().manual_seed(99))
    picks = torch.randint(0, K, (n, L), generator=g)
    tokens = torch.stack([regions[i, picks[i]] for i in range(n)]) @ mix + 0.1 * torch.randn(n, L, TXT_DIM, generator=g)
    return {"regions": regions, "tokens": tokens * mask[..., None], "token_mask": mask, "image_index": torch.arange(n),
            "caption_index": torch.arange(n)}


def unit_features(n_img=7, n_cap=11, dim=16, seed=0, prefix_masks=True):
    g = torch.Generator().manual_seed(seed)
    regions = l2norm(torch.randn(n_img, K, dim, generator=g))
    lengths = torch.randint(1, L + 1, (n_cap,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    if not prefix_masks:  # real words need not come first
        mask = mask[:, torch.randperm(L, generator=g)]
    words = l2norm(torch.randn(n_cap, L, dim, generator=g)) * mask[..., None]
    return regions, words, mask


# ------------------------------------------------------------------------------------------ equations
def literal_pair(regions, words, direction, lam1, pooling, lam2, slope):
    """Lee et al. §3.1-3.2 for one pair with Python floats and loops only."""
    regions, words = regions.tolist(), words.tolist()
    queries, context = (words, regions) if direction == "t2i" else (regions, words)

    def dot(x, y):
        return sum(a * b for a, b in zip(x, y))

    def cos(x, y):
        return dot(x, y) / (math.sqrt(dot(x, x)) * math.sqrt(dot(y, y)))

    s = [[cos(q, c) for c in context] for q in queries]
    clip = [[v if v > 0 else slope * v for v in row] for row in s]
    col_norm = [math.sqrt(sum(clip[a][b] ** 2 for a in range(len(queries)))) for b in range(len(context))]
    r = []
    for a, q in enumerate(queries):
        logits = [lam1 * clip[a][b] / col_norm[b] for b in range(len(context))]
        z = sum(math.exp(x) for x in logits)
        alpha = [math.exp(x) / z for x in logits]
        attended = [sum(alpha[b] * context[b][f] for b in range(len(context))) for f in range(len(q))]
        r.append(cos(q, attended))
    if pooling == "avg":
        return sum(r) / len(r)
    return math.log(sum(math.exp(lam2 * x) for x in r)) / lam2


@pytest.mark.parametrize("direction,pooling", SETTINGS)
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_pair_score_equals_the_papers_equations_computed_by_hand(direction, pooling, slope):
    regions, words, mask = unit_features(2, 3, dim=6, seed=1)
    for i in range(2):
        for c in range(3):
            w = words[c][mask[c]]
            want = literal_pair(regions[i].double(), w.double(), direction, 9.0, pooling, 6.0, slope)
            got = reference_pair(regions[i].double(), w.double(), direction, 9.0, pooling, 6.0, slope)
            assert got.item() == pytest.approx(want, abs=1e-10)


def test_attention_weights_and_attended_cosine_of_a_hand_example():
    """t2i, one word w = e1, regions e1 and e2: s = (1, 0), s̄ = (1, 0) (one query: its own norm), α = softmax(9 s̄),
    a = α1 e1 + α2 e2, R = cos(w, a) = α1 / sqrt(α1² + α2²); i2t from the same pair: each region attends over the
    single word (α = 1), so R_k = cos(v_k, w) = (1, 0) and AVG = 0.5."""
    regions = torch.eye(2, dtype=torch.float64)
    word = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    a1 = math.exp(9) / (math.exp(9) + 1)
    a2 = 1 - a1
    assert reference_pair(regions, word, "t2i", 9.0, "avg", 6.0).item() == pytest.approx(a1 / math.hypot(a1, a2))
    assert reference_pair(regions, word, "i2t", 4.0, "avg", 5.0).item() == pytest.approx(0.5)
    assert reference_pair(regions, word, "i2t", 4.0, "lse", 5.0).item() == pytest.approx(
        math.log(math.exp(5 * 1.0) + math.exp(0.0)) / 5)


def test_pooling_avg_and_lse_by_hand_and_padding_is_ignored():
    r = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    assert pool(r, mask, "avg", 6.0).item() == pytest.approx(0.35)
    assert pool(r, mask, "lse", 6.0).item() == pytest.approx(math.log(math.exp(1.2) + math.exp(3.0)) / 6)
    # LSE tends to the max for large λ2 and lies above it by at most log(n)/λ2
    assert pool(r, mask, "lse", 1e4).item() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="pooling"):
        pool(r, mask, "max", 6.0)


# ------------------------------------------------------------------------------------------ batched scorer
@pytest.mark.parametrize("direction,pooling", SETTINGS)
@pytest.mark.parametrize("prefix_masks", [True, False])
def test_blocked_scorer_equals_the_per_pair_loop(direction, pooling, prefix_masks):
    regions, words, mask = unit_features(prefix_masks=prefix_masks)
    want = reference_scores(regions, words, mask, direction, 9.0, pooling, 6.0, 0.1)
    for bi, bc in [(3, 4), (1, 1), (100, 100)]:
        got = blocked_scores(regions, words, mask, direction, 9.0, pooling, 6.0, 0.1, block_images=bi, block_captions=bc)
        assert (got - want).abs().max().item() <= 1e-5, (bi, bc)


def test_blocked_scorer_rejects_an_empty_caption():
    regions, words, mask = unit_features()
    mask[3] = False
    with pytest.raises(ValueError, match="at least one real token"):
        blocked_scores(regions, words, mask, "t2i", 9.0, "avg", 6.0)


@pytest.mark.parametrize("direction", ["t2i", "i2t", "ensemble"])
def test_model_score_equals_reference_and_is_batch_invariant(direction):
    model = SCAN(config(direction=direction, t2i={"pooling": "lse"}, score_block_images=3, score_block_captions=4),
                 context()).eval()
    b = make_batch(9)
    with torch.no_grad():
        img, cap = model.embed_images(b), model.embed_captions(b)
        fast, ref = model.score(img, cap), model.reference_score(img, cap)
    assert fast.shape == (9, 9)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert_batch_invariant(model, img, cap)


def test_ensemble_is_the_mean_of_the_single_models_of_the_same_seed():
    b = make_batch(6)
    ens = SCAN(config(seed=3, direction="ensemble"), context()).eval()
    singles = [SCAN(config(seed=3, direction=d), context()).eval() for d in ("t2i", "i2t")]
    with torch.no_grad():
        want = sum(m.score(m.embed_images(b), m.embed_captions(b)) for m in singles) / 2
        got = ens.score(ens.embed_images(b), ens.embed_captions(b))
    assert torch.allclose(got, want, atol=1e-6)
    other = SCAN(config(seed=4, direction="t2i"), context())
    assert not torch.equal(other.branches["t2i"].regions.weight, singles[0].branches["t2i"].regions.weight)


# ------------------------------------------------------------------------------------------ loss, learning
def test_training_loss_is_the_hardest_negative_triplet_on_the_scores():
    """Sum over anchors of [m + S(i, ĉ) - S(i, i)]_+ + [m + S(î, c) - S(c, c)]_+, hardest negatives, written out;
    two captions of one image are not negatives of each other; the ensemble adds its two models' losses."""
    model = SCAN(config(direction="ensemble"), context())
    b = make_batch(6)
    b["image_index"] = torch.tensor([0, 0, 1, 2, 3, 4])
    loss, parts = model.training_loss(b, epoch=0)
    with torch.no_grad():
        img, cap = model.embed_images(b), model.embed_captions(b)
        total = 0.0
        for d, branch in model.branches.items():
            s = reference_scores(img[f"{d}_regions"], cap[f"{d}_words"], cap["mask"], *branch.settings()).tolist()
            idx = b["image_index"].tolist()
            part = 0.0
            for n in range(6):
                negs = [m for m in range(6) if idx[m] != idx[n]]
                part += max(0.0, max(0.2 + s[n][m] - s[n][n] for m in negs))   # image anchor n
                part += max(0.0, max(0.2 + s[m][n] - s[n][n] for m in negs))   # caption anchor n
            assert parts[f"loss_{d}"] == pytest.approx(part, abs=1e-5)
            total += part
    assert loss.item() == pytest.approx(total, abs=1e-5)
    assert btr_loss(torch.zeros(3, 3), torch.eye(3, dtype=torch.bool)).item() == pytest.approx(6 * 0.2)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_loss_decreases_in_a_short_training_run(direction):
    torch.manual_seed(0)
    model = SCAN(config(direction=direction), context())
    losses = training_losses(model, [make_batch(16, seed=s) for s in range(4)], steps=80, lr=1e-2)
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.5 * first, (first, last)


def test_ensemble_parts_train_exactly_like_the_single_models_without_a_joint_clip():
    """Separate parameters, summed losses: Adam moves each part as the single run would (same seed, same batches)."""
    runs = {}
    for d in ("ensemble", "t2i", "i2t"):
        model = SCAN(config(seed=1, direction=d), context())
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for s in range(3):
            loss, _ = model.training_loss(make_batch(8, seed=s), epoch=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs[d] = model
    for d in ("t2i", "i2t"):
        for (name, p), q in zip(runs["ensemble"].branches[d].named_parameters(), runs[d].branches[d].parameters()):
            assert torch.allclose(p, q, atol=1e-6), (d, name)


# ------------------------------------------------------------------------------------------ plugin, config
def test_plugin_is_discovered_and_builds_the_model():
    assert "scan" in methods.names() and methods.get("scan").label == "SCAN"
    assert methods.run_inputs(validate({"method": "scan"})) == {}
    model = build_model(config(), context())
    assert isinstance(model, SCAN) and model.method_name == "scan" and set(model.branches) == {"t2i", "i2t"}


def test_defaults_are_the_papers_flickr_ensemble_and_bad_keys_fail():
    s = config()["scan"]
    assert s["direction"] == "ensemble" and s["margin"] == 0.2
    assert s["t2i"] == {"lambda_softmax": 9, "pooling": "avg", "lambda_lse": 6}
    assert s["i2t"] == {"lambda_softmax": 4, "pooling": "avg", "lambda_lse": 5}
    with pytest.raises(ConfigError, match="scan.t2i"):
        config(t2i={"lambda": 9})
    with pytest.raises(ConfigError, match="pooling"):
        config(i2t={"pooling": "max"})


def test_end_to_end_on_tiny_toy(tiny_run_config, tmp_path):
    """Trainer + evaluator with the frozen MiniLM cache; the loss falls over two epochs."""
    from itrbench.training import train_and_evaluate

    cfg = tiny_run_config(method="scan", threads=1, data={"max_train_images": 40},
                          train={"epochs": 2, "batch_size": 40, "lr": 0.002})
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics["protocols"]["f30k_1k"]["rsum"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["eval_settings"] == {"scorer": "scan_blocked", "block_images": 32, "block_captions": 128}
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    means = [row["epoch_mean"]["loss"] for row in log if "epoch_mean" in row]
    assert len(means) == 2 and means[1] < means[0]
