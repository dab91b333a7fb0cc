"""CODER's prototype-guided classification (PGC, Eq. 7) labels: spherical k-means with faiss.

At the end of every epoch the normalised sums l2norm(v^I + w^I) of all training pairs seen in that epoch are
clustered; each pair's cluster id is its pseudo label for the next epoch.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

PAPER_CAPTIONS = {"f30k": 145_000, "coco": 566_435}   # training captions behind the paper's K
PAPER_K = {"f30k": 10_000, "coco": 20_000}


def scaled_k(paper_k: int, n_train_captions: int, paper_captions: int) -> int:
    """K scaled by the share of training captions: round(paper_k * n / paper_captions).

    Clamped to [2, max(2, n // 4)]: below 2 there is nothing to classify, and more than one cluster per
    4 captions would make most prototypes singletons of one image's captions (the paper has ~14.5 captions
    per cluster on F30K and ~28 on COCO).
    """
    if n_train_captions < 1 or paper_captions < 1 or paper_k < 1:
        raise ValueError(f"scaled_k: expected positive sizes, got {paper_k}, {n_train_captions}, {paper_captions}")
    k = int(round(paper_k * n_train_captions / paper_captions))
    return int(min(max(k, 2), max(2, n_train_captions // 4)))


def job_threads() -> int:
    """CPU threads this job may use: torch's setting (the trainer sets it), capped by the CPU affinity."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        import torch

        return max(1, min(cores, torch.get_num_threads()))
    except ImportError:  # pragma: no cover
        return max(1, cores)


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 25, seed: int = 0, threads: int | None = None,
                     use_gpu: bool | None = None, nredo: int = 1) -> np.ndarray:
    """Cluster the rows of x (l2-normalised here) into k spherical clusters; returns int64 labels (n,).

    k is reduced to n when there are fewer points than clusters. faiss would warn below 39 points per
    centroid; the paper's own ratio (~14.5 on F30K) is below that, so the warning is switched off.
    nredo > 1 keeps the best of several random initialisations (faiss seeds centroids with random points,
    which can leave two centroids in one true cluster).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"spherical_kmeans: expected a non-empty (n, d) array, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = int(min(k, len(x)))
    faiss.omp_set_num_threads(threads or job_threads())
    if use_gpu is None:
        use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    # min_points_per_centroid=1: fewer than 39 points per cluster is intended here (see docstring)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False, gpu=bool(use_gpu),
                      min_points_per_centroid=1, nredo=nredo)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels.reshape(-1).astype(np.int64)


class PseudoLabels:
    """Collects l2norm(v^I + w^I) per caption during an epoch; `recluster` turns them into labels.

    Features are kept as a float32 (n_train_captions, F) array (COCO at F = 1024: 2.3 GB), allocated on first
    use. Pairs not seen in the last epoch (e.g. dropped by drop_last) get label -1 and are ignored by the loss.
    """

    def __init__(self, n_captions: int, dim: int, k: int, niter: int = 25, seed: int = 0, nredo: int = 1):
        self.n, self.dim, self.k, self.niter, self.seed = int(n_captions), int(dim), int(k), int(niter), int(seed)
        self.nredo = int(nredo)
        self.labels = np.full(self.n, -1, dtype=np.int64)   # used during the current epoch
        self._feats: np.ndarray | None = None
        self._seen = np.zeros(self.n, dtype=bool)

    @property
    def ready(self) -> bool:
        return bool((self.labels >= 0).any())

    def collect(self, caption_index, feats) -> None:
        idx = np.asarray(caption_index, dtype=np.int64)
        if self._feats is None:
            self._feats = np.zeros((self.n, self.dim), dtype=np.float32)
        self._feats[idx] = np.asarray(feats, dtype=np.float32)
        self._seen[idx] = True

    def recluster(self, epoch: int = 0) -> dict:
        """Run k-means on the pairs seen this epoch, replace the labels, reset the collection."""
        feats, seen = self._feats, self._seen
        feats, seen = _all_reduce(feats, seen)
        labels = np.full(self.n, -1, dtype=np.int64)
        n_seen = int(seen.sum())
        if n_seen >= 2:
            labels[seen] = spherical_kmeans(feats[seen], self.k, self.niter, seed=self.seed + epoch,
                                            nredo=self.nredo)
        self.labels = labels
        self._seen = np.zeros(self.n, dtype=bool)
        used = int(len(np.unique(labels[seen]))) if n_seen else 0
        return {"pgc_points": n_seen, "pgc_k": min(self.k, n_seen), "pgc_clusters_used": used}

    def state(self) -> dict:
        return {"labels": self.labels.copy(), "k": self.k}

    def load_state(self, d: dict) -> None:
        labels = np.asarray(d["labels"], dtype=np.int64)
        if labels.shape != (self.n,):
            raise ValueError(f"pseudo-label state holds {labels.shape[0]} labels, expected {self.n}")
        self.labels = labels


def _all_reduce(feats, seen):
    """Under DDP each rank saw a disjoint share of the pairs: sum the collections so every rank clusters all."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return feats, seen
    if feats is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return feats, seen
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    f = torch.from_numpy(feats).to(device)
    s = torch.from_numpy(seen.astype(np.float32)).to(device)
    dist.all_reduce(f)
    dist.all_reduce(s)
    s = s.cpu().numpy()
    return f.cpu().numpy() / np.maximum(s, 1)[:, None], s > 0
