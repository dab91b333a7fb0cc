"""CODER's concept branch inputs (SPEC §4.2, after CVSE): vocabulary, image-level co-occurrence,
the normalised adjacency Â, word vectors (GloVe or MiniLM input embeddings) and the 2-layer GCN.

`itrbench concepts` (commands/concepts.py) writes everything into one folder, inspectable with numpy:
    vocab.txt         g concept words, most frequent first
    cooc.npy          int64 (g, g) number of training images holding both concepts (diagonal 0)
    freq.npy          int64 (g,) number of training images holding each concept (n_i)
    adjacency.npy     float64 (g, g) Â = concept_adjacency(cooc, freq)
    word_vectors.npy  float32 (g, d) X, the GCN input
    meta.json         provenance: data set, split, images used, word-vector source, missing words
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from itrbench.errors import DataError
from itrbench.utils import atomic_path

log = logging.getLogger(__name__)

# Words are runs of letters (no digits / underscores), at least two long, lower-cased.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"
FILES = ("vocab.txt", "cooc.npy", "freq.npy", "adjacency.npy", "word_vectors.npy", "meta.json")


class ConceptDataError(DataError, ValueError):
    """Bad concept statistics; a ValueError too, so numeric callers can catch the usual type."""


# --------------------------------------------------------------------------------------------------
# vocabulary and co-occurrence
# --------------------------------------------------------------------------------------------------
def _vectorizer(vocabulary=None, binary=False):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(lowercase=True, stop_words="english", token_pattern=TOKEN_PATTERN,
                           vocabulary=vocabulary, binary=binary, dtype=np.int64)


def build_vocabulary(captions: list[str], num_concepts: int = 400) -> list[str]:
    """The `num_concepts` most frequent non-stop-words (total occurrences; ties alphabetical)."""
    vec = _vectorizer()
    try:
        counts = vec.fit_transform(captions)
    except ValueError:  # sklearn: "empty vocabulary"
        raise DataError("captions: no word left after removing English stop words; expected real captions") from None
    words = vec.get_feature_names_out()
    totals = np.asarray(counts.sum(axis=0)).ravel()
    order = np.lexsort((words, -totals))  # last key is primary: count descending, then word
    if len(words) < num_concepts:
        log.warning("only %d distinct non-stop-words in the captions; using all of them (asked for %d)",
                    len(words), num_concepts)
    return [str(words[i]) for i in order[:num_concepts]]


def image_concepts(captions: list[str], vocab: list[str], captions_per_image: int):
    """Binary sparse (n_images, g): image k holds concept i if any of its captions mentions it."""
    import scipy.sparse as sp

    if len(captions) % captions_per_image:
        raise DataError(f"captions: {len(captions)} captions is not a multiple of {captions_per_image} per image")
    per_caption = _vectorizer(vocabulary=vocab, binary=True).transform(captions)
    n_caps = len(captions)
    n_images = n_caps // captions_per_image
    to_image = sp.csr_matrix((np.ones(n_caps, dtype=np.int64), (np.arange(n_caps) // captions_per_image, np.arange(n_caps))),
                             shape=(n_images, n_caps))
    held = (to_image @ per_caption).tocsr()
    held.data[:] = 1
    return held


def cooccurrence(held) -> tuple[np.ndarray, np.ndarray]:
    """(cooc, freq) from the binary image x concept matrix: cooc_ij = images holding i and j (diagonal 0)."""
    cooc = np.asarray((held.T @ held).todense(), dtype=np.int64)
    freq = np.diagonal(cooc).copy()
    np.fill_diagonal(cooc, 0)
    return cooc, freq


def concept_adjacency(cooc, freq, threshold: float = 0.3) -> np.ndarray:
    """Normalised adjacency Â of SPEC §4.2 (CVSE `gen_A_concept` "Complex" + ML-GCN `gen_adj`), in order:

    1. A_ij = C_ij / n_i  (P(concept j | concept i), row-wise; A_ii = 0)
    2. A <- 5^(A - 0.02) - 5^(-0.02)           (rescale; keeps A_ii = 0)
    3. A <- [A >= threshold]                    (binarise)
    4. A <- 0.25 * A / (column sums + 1e-6)     (column reweight)
    5. A <- A + I
    6. Â = (A @ D).T @ D with D = diag(row sums of A)^(-1/2)   (= D Aᵀ D; A is not symmetric)
    """
    C = np.array(cooc, dtype=np.float64)
    n = np.array(freq, dtype=np.float64).reshape(-1)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] != n.shape[0]:
        raise ConceptDataError(f"concept_adjacency: cooc {C.shape} and freq {n.shape}; expected (g, g) and (g,)")
    if not (np.isfinite(C).all() and np.isfinite(n).all()) or (C < 0).any() or (n < 0).any():
        raise ConceptDataError("concept_adjacency: counts must be finite and non-negative")
    empty = np.flatnonzero(n == 0)
    if empty.size:
        raise ConceptDataError(f"concept_adjacency: concept {int(empty[0])} occurs in no image (n_i = 0); "
                               f"every concept must occur at least once")
    np.fill_diagonal(C, 0.0)
    A = C / n[:, None]
    A = np.power(5.0, A - 0.02) - np.power(5.0, -0.02)
    A = (A >= threshold).astype(np.float64)
    A = 0.25 * A / (A.sum(axis=0, keepdims=True) + 1e-6)
    A = A + np.identity(A.shape[0])
    D = np.diag(np.power(A.sum(axis=1), -0.5))
    return (A @ D).T @ D


# --------------------------------------------------------------------------------------------------
# word vectors
# --------------------------------------------------------------------------------------------------
def glove_vectors(words: list[str], glove_txt_path, dim: int | None = None, return_missing: bool = False):
    """(g, d) float32 rows of a GloVe text file ("word v1 ... vd" per line), streamed; only `words` kept.

    Exact matches win; otherwise the first case-insensitive match (glove.840B is cased). Missing words get
    zeros and a logged warning with their count. Tokens with spaces (glove.840B has a few) are handled by
    splitting the numbers off the right. With return_missing, returns (vectors, list of missing words).
    """
    path = Path(glove_txt_path)
    if not path.is_file():
        raise DataError(f"{path}: GloVe file not found; expected a text file of 'word v1 ... vd' lines")
    wanted = {w: i for i, w in enumerate(words)}
    lower = {w.lower(): i for i, w in enumerate(words)}
    out: np.ndarray | None = None
    exact = np.zeros(len(words), dtype=bool)
    found = np.zeros(len(words), dtype=bool)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip(" ")
            if not line:
                continue
            if dim is None:
                dim = len(line.split(" ")) - 1
                if dim < 1:
                    raise DataError(f"{path}: line {lineno} has no numbers; expected 'word v1 ... vd'")
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1:
                raise DataError(f"{path}: line {lineno} has {len(parts) - 1} numbers; expected {dim}")
            token = parts[0]
            i = wanted.get(token)
            is_exact = i is not None
            if i is None:
                i = lower.get(token.lower())
                if i is None or found[i]:
                    continue
            elif exact[i]:
                continue
            if out is None:
                out = np.zeros((len(words), dim), dtype=np.float32)
            try:
                out[i] = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}: line {lineno} holds a non-number; expected 'word v1 ... vd'") from None
            found[i] = True
            exact[i] |= is_exact
            if exact.all():
                break
    if out is None:
        out = np.zeros((len(words), dim or 300), dtype=np.float32)
    missing = int((~found).sum())
    if missing:
        log.warning("%d of %d concept words are not in %s; their vectors are zeros", missing, len(words), path)
    if return_missing:
        return out, [w for w, ok in zip(words, found) if not ok]
    return out


def minilm_word_vectors(words: list[str], encoder_path=None) -> np.ndarray:
    """(g, H) float32: mean over each word's word pieces of the transformer's input embeddings."""
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if encoder_path is None:
        from itrbench.text import resolve_encoder_path

        encoder_path = resolve_encoder_path("minilm")
    tok = AutoTokenizer.from_pretrained(str(encoder_path), local_files_only=True)
    table = AutoModel.from_pretrained(str(encoder_path), local_files_only=True).get_input_embeddings().weight.detach()
    out = np.zeros((len(words), table.shape[1]), dtype=np.float32)
    for i, w in enumerate(words):
        ids = tok(w, add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = table[ids].mean(0).float().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# build / load the concept folder
# --------------------------------------------------------------------------------------------------
@dataclass
class Concepts:
    vocab: list[str]
    cooc: np.ndarray
    freq: np.ndarray
    adjacency: np.ndarray
    word_vectors: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_concepts(self) -> int:
        return len(self.vocab)


def compute_concepts(captions: list[str], captions_per_image: int, num_concepts: int = 400,
                     word_vectors: str = "minilm", threshold: float = 0.3) -> Concepts:
    """Everything `build_concepts` writes, in memory."""
    if word_vectors != "minilm" and not Path(word_vectors).is_file():  # fail before the slow part
        raise DataError(f"{word_vectors}: GloVe file not found; expected 'minilm' or a text file of 'word v1 ... vd' lines")
    vocab = build_vocabulary(captions, num_concepts)
    cooc, freq = cooccurrence(image_concepts(captions, vocab, captions_per_image))
    adjacency = concept_adjacency(cooc, freq, threshold)
    missing: list[str] = []
    if word_vectors == "minilm":
        vectors = minilm_word_vectors(vocab)
    else:
        vectors, missing = glove_vectors(vocab, word_vectors, return_missing=True)
    meta = {"num_concepts": len(vocab), "requested_concepts": num_concepts, "n_images": len(captions) // captions_per_image,
            "n_captions": len(captions), "word_vectors": str(word_vectors), "word_dim": int(vectors.shape[1]),
            "missing_words": missing, "threshold": threshold}
    return Concepts(vocab, cooc, freq, adjacency, vectors, meta)


def build_concepts(split, out_dir, num_concepts: int = 400, word_vectors: str = "minilm",
                   max_images: int | None = None) -> Concepts:
    """Build the concept folder for a `PrecompSplit` (training split) and write it atomically to `out_dir`."""
    cpi = int(split.captions_per_image)
    captions = list(split.captions)
    if max_images is not None:
        captions = captions[: max_images * cpi]
    concepts = compute_concepts(captions, cpi, num_concepts, word_vectors)
    concepts.meta.update({"dataset": getattr(split, "dataset", None), "split": getattr(split, "split", None)})
    save_concepts(concepts, out_dir)
    return concepts


def save_concepts(c: Concepts, out_dir) -> None:
    with atomic_path(out_dir, suffix=".tmp") as tmp:
        tmp.mkdir(parents=True)
        (tmp / "vocab.txt").write_text("".join(w + "\n" for w in c.vocab), encoding="utf-8")
        np.save(tmp / "cooc.npy", c.cooc)
        np.save(tmp / "freq.npy", c.freq)
        np.save(tmp / "adjacency.npy", c.adjacency)
        np.save(tmp / "word_vectors.npy", c.word_vectors)
        (tmp / "meta.json").write_text(json.dumps(c.meta, indent=2, sort_keys=True) + "\n")


def load_concepts(concept_dir) -> Concepts:
    folder = Path(concept_dir)
    for name in FILES:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: file not found; expected the output of `itrbench concepts`")
    vocab = [w for w in (folder / "vocab.txt").read_text(encoding="utf-8").split("\n") if w]
    arrays = {}
    for name in ("cooc", "freq", "adjacency", "word_vectors"):
        try:
            arrays[name] = np.load(folder / f"{name}.npy")
        except (ValueError, OSError) as err:
            raise DataError(f"{folder / name}.npy: not a readable .npy file ({err})") from None
    g = len(vocab)
    expect = {"cooc": (g, g), "freq": (g,), "adjacency": (g, g)}
    for name, shape in expect.items():
        if arrays[name].shape != shape:
            raise DataError(f"{folder / name}.npy: shape {arrays[name].shape}; expected {shape} for {g} concepts in vocab.txt")
    if arrays["word_vectors"].ndim != 2 or arrays["word_vectors"].shape[0] != g:
        raise DataError(f"{folder / 'word_vectors.npy'}: shape {arrays['word_vectors'].shape}; expected ({g}, d)")
    if not np.isfinite(arrays["adjacency"]).all() or not np.isfinite(arrays["word_vectors"]).all():
        raise DataError(f"{folder}: adjacency.npy or word_vectors.npy holds NaN/inf; expected finite values")
    meta = json.loads((folder / "meta.json").read_text())
    return Concepts(vocab, arrays["cooc"], arrays["freq"], arrays["adjacency"], arrays["word_vectors"], meta)


# --------------------------------------------------------------------------------------------------
# GCN over the concept graph
# --------------------------------------------------------------------------------------------------
class ConceptGCN(nn.Module):
    """Y = l2norm(Â · LeakyReLU(Â · X W1) · W2): two graph convolutions, in -> F/2 -> F (ML-GCN / CVSE).

    X (word vectors) and Â are fixed buffers; only W1, W2 learn. Buffers are persistent so a checkpoint
    carries the graph it was trained with.
    """

    def __init__(self, word_vectors, adjacency, embed_dim: int):
        super().__init__()
        X = torch.as_tensor(np.asarray(word_vectors), dtype=torch.float32)
        A = torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
        if A.shape != (X.shape[0], X.shape[0]):
            raise ValueError(f"ConceptGCN: adjacency {tuple(A.shape)} does not match {X.shape[0]} word vectors")
        self.register_buffer("X", X)
        self.register_buffer("A", A)
        self.gc1 = nn.Linear(X.shape[1], embed_dim // 2, bias=False)
        self.gc2 = nn.Linear(embed_dim // 2, embed_dim, bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self) -> torch.Tensor:
        h = self.act(self.A @ self.gc1(self.X))
        y = self.A @ self.gc2(h)
        return y / y.norm(dim=1, keepdim=True).clamp_min(1e-8)
