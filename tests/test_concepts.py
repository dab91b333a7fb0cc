"""Concept vocabulary, co-occurrence, the adjacency pipeline (by hand), word vectors, GCN, build/load."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itrbench.methods.coder.concepts import (ConceptGCN, build_concepts, build_vocabulary, concept_adjacency, cooccurrence,
                               glove_vectors, image_concepts, load_concepts, minilm_word_vectors)
from itrbench.errors import DataError

CAPTIONS = [  # 3 images x 2 captions
    "a dog on the grass", "the dog runs",        # image 0: dog, grass, runs
    "a cat on grass", "cat sleeping",            # image 1: cat, grass, sleeping
    "a dog and a cat", "two animals",            # image 2: dog, cat, animals ("two", "and", "a" are stop words)
]


def test_vocabulary_cooccurrence_by_hand():
    vocab = build_vocabulary(CAPTIONS, 4)
    # counts: cat 3, dog 3, grass 2, then animals/runs/sleeping 1 each -> ties alphabetical
    assert vocab == ["cat", "dog", "grass", "animals"]
    cooc, freq = cooccurrence(image_concepts(CAPTIONS, vocab, 2))
    # an image's concepts are the union over its captions: dog counts once for image 0
    assert freq.tolist() == [2, 2, 2, 1]
    assert cooc.tolist() == [[0, 1, 1, 1],     # cat-dog img2, cat-grass img1, cat-animals img2
                             [1, 0, 1, 1],     # dog-grass img0, dog-animals img2
                             [1, 1, 0, 0],
                             [1, 1, 0, 0]]


def test_adjacency_four_concepts_by_hand():
    # n = [8, 2, 2, 1]; C01 = 2, C02 = 2, C03 = 1, C13 = 1, others 0 (diagonal ignored: set to 99 here)
    C = np.array([[99, 2, 2, 1], [2, 99, 0, 1], [2, 0, 99, 0], [1, 1, 0, 99]])
    n = np.array([8, 2, 2, 1])
    # step 1, A = C / n_i row-wise:
    #   [0, .25, .25, .125] / [1, 0, 0, .5] / [1, 0, 0, 0] / [1, 1, 0, 0]
    # step 2, f(a) = 5^(a-.02) - 5^-.02 with 5^-.02 = 0.968324:
    #   f(.125) = 1.184109 - .968324 = 0.215786  (< 0.3 -> dropped by step 3)
    #   f(.25) = 0.479658, f(.5) = 1.196914, f(1) = 3.873295   (>= 0.3 -> 1)
    assert 5 ** (0.125 - 0.02) - 5 ** -0.02 == pytest.approx(0.215786, abs=1e-6)
    assert 5 ** (0.25 - 0.02) - 5 ** -0.02 == pytest.approx(0.479658, abs=1e-6)
    # step 3, binarised:
    B = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=float)
    # step 4, column sums [3, 2, 1, 1] -> each 1 becomes 0.25/3, 0.25/2, 0.25, 0.25 (1e-6 is negligible)
    R = np.array([[0, 1 / 8, 1 / 4, 0], [1 / 12, 0, 0, 1 / 4], [1 / 12, 0, 0, 0], [1 / 12, 1 / 8, 0, 0]])
    assert np.allclose(0.25 * B / B.sum(0), R)
    # step 5, + I: row sums [1.375, 4/3, 13/12, 29/24]
    A = R + np.eye(4)
    d = np.array([1.375, 4 / 3, 13 / 12, 29 / 24]) ** -0.5
    # step 6, Â_ij = d_i * A_ji * d_j (transpose of A D, times D)
    want = np.array([[d[i] * A[j, i] * d[j] for j in range(4)] for i in range(4)])
    got = concept_adjacency(C, n)
    assert got.dtype == np.float64 and got.shape == (4, 4)
    assert np.allclose(got, want, atol=1e-6)
    # a few entries worked out fully: diagonal = 1/rowsum; Â_01 = d0 d1 / 12; Â_10 = d0 d1 / 8; Â_20 = d0 d2 / 4
    assert np.diag(got) == pytest.approx([1 / 1.375, 0.75, 12 / 13, 24 / 29], abs=1e-6)
    assert got[0, 1] == pytest.approx(0.061546, abs=1e-6)
    assert got[1, 0] == pytest.approx(0.092319, abs=1e-6)
    assert got[2, 0] == pytest.approx(0.204836, abs=1e-6)
    assert got[3, 0] == 0.0                               # A_03 was dropped at step 3 (f(.125) < .3)
    assert not np.allclose(got, got.T)                    # not symmetric, as CVSE computes it


def test_adjacency_rejects_unused_concept():
    C = np.zeros((3, 3))
    with pytest.raises(DataError, match="concept 1 "):
        concept_adjacency(C, np.array([2, 0, 1]))
    with pytest.raises(ValueError):                       # also a ValueError for numeric callers
        concept_adjacency(C, np.array([2, 0, 1]))
    with pytest.raises(DataError, match="expected"):
        concept_adjacency(np.zeros((3, 2)), np.ones(3))


def test_glove_loader(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 1 1\nDog 2 2 2\ndog 3 3 3\nat name@x.com 7 7 7\ncat 4 4.5 -4\n", encoding="utf-8")
    vec, missing = glove_vectors(["dog", "cat", "zebra", "name@x.com"], path, return_missing=True)
    assert vec.dtype == np.float32 and vec.shape == (4, 3)
    assert vec[0].tolist() == [3, 3, 3]                   # exact match beats the earlier cased one
    assert vec[1].tolist() == [4, 4.5, -4]
    assert vec[2].tolist() == [0, 0, 0] and missing == ["zebra", "name@x.com"]
    # case-insensitive fallback when only the cased form exists
    assert glove_vectors(["the", "dog"], tmp_path / "glove.txt")[1].tolist() == [3, 3, 3]
    (tmp_path / "bad.txt").write_text("dog 1 2 3\ncat 1 x 3\n")
    with pytest.raises(DataError, match="line 2"):
        glove_vectors(["cat"], tmp_path / "bad.txt")
    with pytest.raises(DataError, match="not found"):
        glove_vectors(["cat"], tmp_path / "none.txt")


def test_minilm_word_vectors_mean_of_pieces():
    from transformers import AutoModel, AutoTokenizer

    from itrbench.text import resolve_encoder_path

    path = resolve_encoder_path("minilm")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    table = AutoModel.from_pretrained(path, local_files_only=True).get_input_embeddings().weight.detach().numpy()
    words = ["dog", "skateboarding"]
    vec = minilm_word_vectors(words)
    assert vec.shape == (2, table.shape[1])
    for w, v in zip(words, vec):
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert np.allclose(v, table[ids].mean(0), atol=1e-6)
    assert len(tok("skateboarding", add_special_tokens=False)["input_ids"]) > 1  # a multi-piece word is covered


def test_build_and_load_roundtrip(tmp_path):
    glove = tmp_path / "g.txt"
    glove.write_text("cat 1 0\ndog 0 1\ngrass 1 1\n")
    split = SimpleNamespace(captions=CAPTIONS, captions_per_image=2, dataset="toy", split="train")
    out = tmp_path / "concepts"
    built = build_concepts(split, out, num_concepts=4, word_vectors=str(glove))
    loaded = load_concepts(out)
    assert loaded.vocab == ["cat", "dog", "grass", "animals"]
    assert np.array_equal(loaded.cooc, built.cooc) and np.array_equal(loaded.freq, [2, 2, 2, 1])
    assert np.allclose(loaded.adjacency, concept_adjacency(built.cooc, built.freq))
    assert loaded.word_vectors.shape == (4, 2) and loaded.word_vectors[3].tolist() == [0, 0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["missing_words"] == ["animals"] and meta["n_images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concepts", "g.txt"]   # no temp left behind
    # max_images restricts the images used
    small = build_concepts(split, tmp_path / "c2", num_concepts=10, word_vectors=str(glove), max_images=1)
    assert small.vocab == ["dog", "grass", "runs"]
    (out / "freq.npy").unlink()
    with pytest.raises(DataError, match="freq.npy"):
        load_concepts(out)


def test_build_failure_leaves_nothing(tmp_path):
    split = SimpleNamespace(captions=CAPTIONS, captions_per_image=2)
    with pytest.raises(DataError):
        build_concepts(split, tmp_path / "c", word_vectors=str(tmp_path / "missing.txt"))
    assert list(tmp_path.iterdir()) == []


def test_gcn_formula_and_gradients():
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    A = np.random.default_rng(1).random((5, 5))
    gcn = ConceptGCN(X, A, embed_dim=8)
    Y = gcn()
    assert Y.shape == (5, 8)
    assert torch.allclose(Y.norm(dim=1), torch.ones(5), atol=1e-6)
    Xt, At = torch.tensor(X), torch.tensor(A, dtype=torch.float32)
    h = torch.nn.functional.leaky_relu(At @ Xt @ gcn.gc1.weight.T, 0.2)
    y = At @ h @ gcn.gc2.weight.T
    assert torch.allclose(Y, y / y.norm(dim=1, keepdim=True), atol=1e-5)
    assert gcn.gc1.weight.shape == (4, 6)                 # in -> F/2 -> F
    assert {n for n, _ in gcn.named_parameters()} == {"gc1.weight", "gc2.weight"}   # X, Â fixed
    Y.sum().backward()
    assert gcn.gc1.weight.grad is not None and gcn.X.grad is None
    assert math.isfinite(float(gcn.gc2.weight.grad.abs().sum()))
