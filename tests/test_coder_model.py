"""The CODER model: losses against a literal recomputation, hooks, fused score, a tiny training run."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itrbench.methods.coder.concepts import Concepts, concept_adjacency, save_concepts
from itrbench.config import validate
from itrbench.errors import ConfigError
from itrbench.models.base import ModelContext, build_model
from itrbench.methods.coder.model import CODER

D_IMG, D_TXT, R, L, F = 12, 10, 4, 5, 16


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    g = 6
    cooc = rng.integers(0, 4, size=(g, g))
    cooc = np.triu(cooc, 1) + np.triu(cooc, 1).T
    freq = cooc.sum(1) + 1
    out = tmp_path_factory.mktemp("concepts") / "c"
    save_concepts(Concepts([f"w{i}" for i in range(g)], cooc, freq, concept_adjacency(cooc, freq),
                           rng.normal(size=(g, 7)).astype(np.float32), {}), out)
    return str(out)


def make_model(tmp_path, concept_dir, n_captions=64, **coder):
    cfg = validate({"method": "coder", "seed": 0, "device": "cpu",
                    "model": {"embed_dim": F, "aggregator": "mean", "gpo_dim": 4},
                    "coder": {"concept_dir": concept_dir, "num_concepts": 6, "queue_size": 16, "pgc_k": 4, **coder}})
    ctx = ModelContext(image_dim=D_IMG, text_dim=D_TXT, n_train_captions=n_captions, work_dir=tmp_path)
    torch.manual_seed(0)
    return build_model(cfg, ctx), cfg


def synthetic_data(n_images=16, cpi=4, seed=0):
    """Each image is a latent z; its regions and its captions' tokens are noisy linear views of z."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_images, 6, generator=g)
    to_reg, to_tok = torch.randn(6, D_IMG, generator=g), torch.randn(6, D_TXT, generator=g)
    image_index = torch.arange(n_images).repeat_interleave(cpi)
    regions = (z @ to_reg)[:, None, :] + 0.3 * torch.randn(n_images, R, D_IMG, generator=g)
    tokens = (z[image_index] @ to_tok)[:, None, :] + 0.3 * torch.randn(len(image_index), L, D_TXT, generator=g)
    return {"regions": regions[image_index], "tokens": tokens, "token_mask": torch.ones(len(image_index), L, dtype=torch.bool),
            "image_index": image_index, "caption_index": torch.arange(len(image_index))}


def take(data, idx):
    return {k: v[idx] for k, v in data.items()}


def step(model, opt, batch, epoch=0):
    model.before_step()
    loss, parts = model.training_loss(batch, epoch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.after_step()
    return parts


# ---- literal references ----

def lit_div(rows, eps=0.1):
    """rows: list of lists of negative similarities -> max-normalised diversities."""
    raw = []
    for vals in rows:
        if not vals:
            raw.append(1.0)
            continue
        m = sum(vals) / len(vals)
        sd = math.sqrt(max(sum(x * x for x in vals) / len(vals) - m * m, 0))
        raw.append(1.0 if sd == 0 else 1 + math.exp(-eps / sd))
    return [d / max(raw) for d in raw]


def lit_l(pos, negs, divs, mu=0.1, gamma=0.3):
    return sum(mu * (math.log(1 + sum(math.exp((s - gamma) / (mu * d)) for s in ng)) - math.log(1 + p))
               for p, ng, d in zip(pos, negs, divs)) / len(pos)


def test_instance_and_mdcl_losses_match_literal_loops(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, concepts=False, pgc=False, mdcl=True, memory_bank_diversity=True)
    model.train()
    data = synthetic_data()
    # fill part of the queue (5 of 16 slots) with items of images 0, 1 and 9: the rest stays unfilled
    qv, qw = torch.nn.functional.normalize(torch.randn(5, F), dim=1), torch.nn.functional.normalize(torch.randn(5, F), dim=1)
    model.queue.enqueue(qv, qw, torch.tensor([0, 1, 9, 9, 0]))
    batch = take(data, torch.tensor([0, 1, 2, 5, 9, 13, 20, 36]))   # images 0,0,0,1,2,3,5,9
    _, parts = model.training_loss(batch, 0)

    with torch.no_grad():
        v, w = model.encode_image(batch).double(), model.encode_text(batch).double()
        vk, wk = (t.double() for t in model.encode_keys(batch))
    ids = batch["image_index"].tolist()
    qids = [0, 1, 9, 9, 0]
    n = len(ids)
    S = (v @ w.T).tolist()

    def diversities(anchor, cand_batch, cand_queue):
        # in-batch diversity from online sims; queue diversity from the 5 filled slots; MB = their mean
        inb = lit_div([[S_ab for j, S_ab in enumerate(row) if ids[j] != ids[i]] for i, row in enumerate(cand_batch)])
        qs = (anchor @ cand_queue.T).tolist()
        inq = lit_div([[qs[i][s] for s in range(5) if qids[s] != ids[i]] for i in range(n)])
        return [(a + b) / 2 for a, b in zip(inb, inq)]

    div_v = diversities(v, S, qw.double())
    div_w = diversities(w, [list(col) for col in zip(*S)], qv.double())
    # L_DCL^I: in-batch, negatives = pairs of other images
    l_inst = (lit_l([S[i][i] for i in range(n)], [[S[i][j] for j in range(n) if ids[j] != ids[i]] for i in range(n)], div_v)
              + lit_l([S[i][i] for i in range(n)], [[S[j][i] for j in range(n) if ids[j] != ids[i]] for i in range(n)], div_w))
    assert parts["l_inst"] == pytest.approx(l_inst, rel=1e-4)
    # L_M-DCL: candidates = momentum keys of the batch + filled queue slots of other images
    Svk, Swk = (v @ wk.T).tolist(), (w @ vk.T).tolist()
    Svq, Swq = (v @ qw.double().T).tolist(), (w @ qv.double().T).tolist()
    l_m = (lit_l([Svk[i][i] for i in range(n)],
                 [[Svk[i][j] for j in range(n) if ids[j] != ids[i]] + [Svq[i][s] for s in range(5) if qids[s] != ids[i]]
                  for i in range(n)], div_v)
           + lit_l([Swk[i][i] for i in range(n)],
                   [[Swk[i][j] for j in range(n) if ids[j] != ids[i]] + [Swq[i][s] for s in range(5) if qids[s] != ids[i]]
                    for i in range(n)], div_w))
    assert parts["l_mdcl"] == pytest.approx(l_m, rel=1e-4)
    assert parts["loss"] == pytest.approx(3.0 * l_inst + l_m, rel=1e-4)


def test_implicit_without_memory_bank(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, concepts=False, pgc=False, mdcl=False, diversity="implicit")
    assert not hasattr(model, "queue") and not hasattr(model, "key_image")   # no keys needed
    batch = take(synthetic_data(), torch.arange(0, 64, 8))
    _, parts = model.training_loss(batch, 0)
    with torch.no_grad():
        S = (model.encode_image(batch) @ model.encode_text(batch).T).tolist()
    n = len(S)
    ones = [1.0] * n
    want = (lit_l([S[i][i] for i in range(n)], [[S[i][j] for j in range(n) if j != i] for i in range(n)], ones)
            + lit_l([S[i][i] for i in range(n)], [[S[j][i] for j in range(n) if j != i] for i in range(n)], ones))
    assert parts["l_inst"] == pytest.approx(want, rel=1e-4) and "l_mdcl" not in parts


def test_btr_row_and_config_errors(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, instance_loss="btr", mdcl=False, concepts=False, pgc=False)
    assert not hasattr(model, "queue")
    loss, parts = model.training_loss(take(synthetic_data(), torch.arange(0, 64, 4)), 0)
    assert torch.isfinite(loss) and set(parts) >= {"l_inst", "loss"}
    with pytest.raises(ConfigError, match="coder.pgc"):
        make_model(tmp_path, concept_dir, concepts=False, pgc=True)


def test_hooks_momentum_queue_and_state(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, momentum=0.5)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert all(not p.requires_grad for p in model.key_image.parameters())
    data = synthetic_data()
    step(model, opt, take(data, torch.arange(6)))
    assert model.queue.count == 6                                   # enqueued after the step
    online = [p.detach().clone() for p in model.image.parameters()]
    key_before = [p.detach().clone() for p in model.key_image.parameters()]
    model.before_step()                                             # theta_k <- .5 theta_k + .5 theta_q
    for q, kb, k in zip(online, key_before, model.key_image.parameters()):
        assert torch.allclose(k, 0.5 * kb + 0.5 * q)
    model.after_step()
    for _ in range(3):
        step(model, opt, take(data, torch.arange(6, 12)))
    assert model.queue.count == 16 and model.queue.valid_mask().all()
    state = model.extra_state()
    other, _ = make_model(tmp_path, concept_dir, momentum=0.5)
    other.load_extra_state(state)
    assert torch.equal(other.queue.text, model.queue.text) and other.queue.ptr == model.queue.ptr
    # the queue is not in the inference checkpoint; the momentum encoders are (needed to resume)
    keys = set(model.state_dict())
    assert not any(k.startswith("queue.") for k in keys) and any(k.startswith("key_image.") for k in keys)


def test_fused_score_and_embeddings(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, beta=0.7)
    model.eval()
    batch = take(synthetic_data(), torch.arange(0, 64, 4))
    with torch.no_grad():
        img, cap = model.embed_images(batch), model.embed_captions(batch)
        s = model.score(img, cap)
    assert set(img) == {"inst", "concept"} and img["concept"].shape == (16, F)
    for e in (img["inst"], img["concept"], cap["inst"], cap["concept"]):
        assert torch.allclose(e.norm(dim=1), torch.ones(len(e)), atol=1e-5)
    want = 0.7 * img["inst"] @ cap["inst"].T + 0.3 * img["concept"] @ cap["concept"].T
    assert torch.allclose(s, want, atol=1e-6)
    # a pair's score does not depend on the rest of the block
    sub = model.score({k: v[3:5] for k, v in img.items()}, {k: v[7:8] for k, v in cap.items()})
    assert torch.allclose(sub, s[3:5, 7:8], atol=1e-6)
    # concept query, literally Eq. 2 for one image
    with torch.no_grad():
        Y = model.gcn()
        a = torch.softmax(10.0 * (img["inst"][0] @ model.query_v.W) @ Y.T, dim=0)
        vc = (a[:, None] * Y).sum(0)
    assert torch.allclose(img["concept"][0], vc / vc.norm(), atol=1e-5)
    plain, _ = make_model(tmp_path, concept_dir, concepts=False, pgc=False)
    pe = plain.embed_images(batch)
    assert set(pe) == {"inst"}
    assert torch.allclose(plain.score(pe, pe), pe["inst"] @ pe["inst"].T)


def test_tiny_training_run_loss_decreases_and_pgc_activates(tmp_path, concept_dir):
    model, _ = make_model(tmp_path, concept_dir, n_captions=64)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = synthetic_data()
    g = torch.Generator().manual_seed(1)
    epoch_losses, pgc_losses = [], []
    for epoch in range(6):
        losses, pgc = [], []
        for idx in torch.randperm(64, generator=g).split(16):
            parts = step(model, opt, take(data, idx), epoch)
            losses.append(parts["loss"] - parts.get("l_pgc", 0.0))   # same terms every epoch
            assert ("l_pgc" in parts) == (epoch >= 1)                # PGC from the second epoch on
            pgc.append(parts.get("l_pgc", 0.0))
        info = model.on_epoch_end(None, epoch)
        assert info["pgc_points"] == 64
        if epoch == 0:   # every cluster is new: its P^C row starts as pgc_init_scale x its unit prototype
            rows = np.flatnonzero(model.pseudo.changed)
            assert len(rows) == info["pgc_clusters_used"] > 1
            assert torch.allclose(model.pgc_head.weight[rows], 10.0 * torch.as_tensor(model.pseudo.prototypes[rows]))
        epoch_losses.append(sum(losses) / len(losses))
        pgc_losses.append(sum(pgc) / len(pgc))
        assert model.pseudo.ready and (model.pseudo.labels >= 0).all()
    assert epoch_losses[-1] < 0.8 * epoch_losses[0]
    # stable pseudo labels: L_PGC ends well below chance, 2 ln K
    assert pgc_losses[-1] < 0.6 * 2 * math.log(model.pgc_k), pgc_losses
    # the learned embeddings retrieve far above chance (1 in 16 images)
    model.eval()
    with torch.no_grad():
        s = model.score(model.embed_images(data), model.embed_captions(data))
    assert (s.argmax(1) // 4 == torch.arange(64) // 4).float().mean() > 0.35
    state = model.extra_state()
    assert state["pgc"]["labels"].shape == (64,)


def test_pgc_k_scaled_from_paper(tmp_path, concept_dir):
    # the family comes from the run config, never from the data set's name
    cfg = validate({"method": "coder", "data": {"dataset": "toy-f30k"},
                    "model": {"embed_dim": F, "aggregator": "mean"},
                    "coder": {"concept_dir": concept_dir, "num_concepts": 6, "paper_family": "coco"}})
    ctx = ModelContext(image_dim=D_IMG, text_dim=D_TXT, n_train_captions=56_643, work_dir=tmp_path)
    assert CODER(cfg, ctx).pgc_k == 2000                              # 20000 * 56,643 / 566,435
    cfg["coder"]["paper_family"] = "f30k"
    assert CODER(cfg, ctx).pgc_k == round(10000 * 56_643 / 145_000)
    cfg["coder"]["paper_family"] = None
    with pytest.raises(ConfigError, match="coder.paper_family"):
        CODER(cfg, ctx)
    cfg["coder"]["pgc_k"] = 9                                         # an explicit K needs no family
    assert CODER(cfg, ctx).pgc_k == 9


def test_builds_concepts_into_work_dir(tmp_path, monkeypatch):
    import itrbench.methods.coder.concepts as concepts_mod

    monkeypatch.setattr(concepts_mod, "minilm_word_vectors", lambda words: np.ones((len(words), 5), np.float32))
    caps = ["a red car on a street", "a car parked", "a dog on a beach", "dog running on sand"]
    split = SimpleNamespace(captions=caps, captions_per_image=2, dataset="toy", split="train")
    cfg = validate({"method": "coder", "model": {"embed_dim": F, "aggregator": "mean"},
                    "coder": {"num_concepts": 5, "pgc": False}})
    ctx = ModelContext(image_dim=D_IMG, text_dim=D_TXT, train_split=split, n_train_captions=4, work_dir=tmp_path)
    model = CODER(cfg, ctx)
    assert (tmp_path / "concepts" / "vocab.txt").read_text().split() == ["car", "dog", "beach", "parked", "red"]
    assert model.gcn.X.shape == (5, 5)


@pytest.mark.slow
def test_trainer_end_to_end_and_resume(tiny_run_config, tmp_path, concept_dir):
    """The generic trainer drives every hook (momentum, queue, concepts, PGC k-means, checkpoint state), and
    2 epochs straight == 1 epoch, 'crash', resume: queues, momentum encoders and PGC labels are restored."""
    import json

    from itrbench.config import config_hash
    from itrbench.training import Trainer, train_and_evaluate

    cfg = tiny_run_config(method="coder", train={"epochs": 2, "batch_size": 32, "lr": 2e-3},
                          coder={"concept_dir": concept_dir, "num_concepts": 6, "queue_size": 64,
                                 "paper_family": "f30k"})
    full = train_and_evaluate(cfg, tmp_path / "full")
    m = full["protocols"]["f30k_1k"]
    # chance on 40 test images: R@1/5/10 ~ 2.5/12.5/25 per direction (rsum ~78); 24 steps only learn a little
    assert m["rsum"] > 100, m
    rows = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    means = [r["epoch_mean"] for r in rows if "epoch_mean" in r]
    assert "l_pgc" not in means[0] and "l_pgc" in means[1] and "l_mdcl" in means[0]
    assert means[-1]["l_inst"] < means[0]["l_inst"]
    state = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    assert state["extra"]["queue"]["count"] == 64 and (state["extra"]["pgc"]["labels"] >= 0).any()
    Trainer({**cfg, "train": {**cfg["train"], "epochs": 1}}, tmp_path / "resumed").train()
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    state["config_hash"] = config_hash(cfg, ())
    torch.save(state, tmp_path / "resumed" / "checkpoint.pt")
    resumed = train_and_evaluate(cfg, tmp_path / "resumed")
    assert resumed["protocols"] == full["protocols"]


def test_instance_and_concept_diversity_are_separate_switches(tmp_path, concept_dir):
    """Table 3's `diversity` changes the instance-level terms only; L_DCL^C follows `concept_diversity`."""
    batch = take(synthetic_data(), torch.arange(0, 64, 4))
    parts = {}
    for inst in ("explicit", "implicit"):
        for conc in ("explicit", "implicit"):
            model, _ = make_model(tmp_path, concept_dir, pgc=False, mdcl=False, memory_bank_diversity=False,
                                  diversity=inst, concept_diversity=conc)
            parts[inst, conc] = model.training_loss(batch, 0)[1]
    assert parts["explicit", "explicit"]["l_concept"] == parts["implicit", "explicit"]["l_concept"]
    assert parts["explicit", "implicit"]["l_concept"] == parts["implicit", "implicit"]["l_concept"]
    assert parts["explicit", "explicit"]["l_concept"] != pytest.approx(parts["explicit", "implicit"]["l_concept"], rel=1e-4)
    assert parts["explicit", "explicit"]["l_inst"] == parts["explicit", "implicit"]["l_inst"]
    assert parts["explicit", "explicit"]["l_inst"] != pytest.approx(parts["implicit", "explicit"]["l_inst"], rel=1e-4)


def test_table3_rows_differ_from_the_full_model_only_in_instance_level_keys():
    from pathlib import Path

    from itrbench.experiments import plan as reg

    repo = Path(__file__).resolve().parents[1]
    wf = reg.load_workflow_config(repo / "workflow/config/default.yaml", repo / "workflow/config/schema.yaml")
    registry = reg.load_registry(repo / "workflow/experiments.yaml")
    instance_keys = {"diversity", "mdcl", "memory_bank_diversity"}
    full = reg.resolve_experiment(wf, registry, "coder/table1/coder", "f30k")
    assert reg.resolve_experiment(wf, registry, "coder/table3/row6", "f30k") == full
    for row in range(1, 6):
        cfg = reg.resolve_experiment(wf, registry, f"coder/table3/row{row}", "f30k")
        assert {k for k in cfg if cfg[k] != full[k]} == {"coder"}, row
        changed = {k for k in cfg["coder"] if cfg["coder"][k] != full["coder"][k]}
        assert changed and changed <= instance_keys, (row, changed)
