"""CODER's prototype-guided classification (PGC, Eq. 7) labels: spherical k-means with faiss.

At the end of every epoch the normalised sums l2norm(v^I + w^I) of all training pairs seen in that epoch are
clustered; each pair's cluster id is its pseudo label for the next epoch.

Labels must keep their meaning from one epoch to the next, because the classifier P^C keeps what it learned
for each id. So every clustering after the first starts from the previous centroids (warm start): centroid j
begins where cluster j ended, and on unchanged features Lloyd's iterations stay at that fixed point, so every
point keeps its id. A cluster whose members mostly carried another id last epoch (faiss re-seeds empty
clusters by splitting big ones, or the features drifted) is reported as changed, and the model re-initialises
its P^C row from the cluster's prototype (`prototype_rows`). See docs/coder.md, "PGC".
"""
from __future__ import annotations

import logging

import numpy as np

from itrbench.utils import cpu_threads

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
        import torch

        return cpu_threads(torch.get_num_threads(), cap=True)
    except ImportError:  # pragma: no cover
        return cpu_threads()


def kmeans_gpu(faiss, use_gpu: bool | None = None) -> int | None:
    """The GPU (a faiss device number) k-means runs on, or None for the CPU.

    Auto (use_gpu None): a GPU when faiss is a GPU build that sees one (`get_num_gpus() > 0`; the faiss-cpu wheel
    reports 0) and this process trains on CUDA, i.e. torch's CUDA is initialised: the device it trains on (under
    DDP each rank's own), so a CPU run on a GPU machine leaves the GPUs alone. use_gpu=True: a GPU (an error
    when faiss has none); False: the CPU.
    """
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu and n_gpus < 1:
        raise RuntimeError("k-means: use_gpu=True, but faiss sees no GPU (the faiss-cpu wheel, or no CUDA device); "
                           "install the `gpu` extra (docs/coder.md, PGC)")
    if use_gpu is False or n_gpus < 1:
        return None
    device = _torch_cuda_device()
    if device is None:
        return 0 if use_gpu else None
    return device if device < n_gpus else 0


def _torch_cuda_device() -> int | None:
    """torch's current CUDA device when this process has initialised CUDA, else None."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch.cuda.current_device() if torch.cuda.is_initialized() else None


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 25, seed: int = 0, threads: int | None = None,
                     use_gpu: bool | None = None, nredo: int = 1, init: np.ndarray | None = None,
                     return_centroids: bool = False):
    """Cluster the rows of x (l2-normalised here) into k spherical clusters; returns int64 labels (n,).

    k is reduced to n when there are fewer points than clusters. faiss would warn below 39 points per
    centroid; the paper's own ratio (~14.5 on F30K) is below that, so the warning is switched off.
    nredo > 1 keeps the best of several random initialisations (faiss seeds centroids with random points,
    which can leave two centroids in one true cluster). `init` (k, d) starts Lloyd's iterations from given
    centroids instead (then nredo is 1): cluster j starts at init[j], so ids carry over.
    With return_centroids, returns (labels, centroids (k, d) float32, unit rows).
    On a GPU when `kmeans_gpu` picks one (use_gpu: None = auto, True, False); same seed, same procedure.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"spherical_kmeans: expected a non-empty (n, d) array, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = int(min(k, len(x)))
    faiss.omp_set_num_threads(threads or job_threads())
    gpu = kmeans_gpu(faiss, use_gpu)
    # min_points_per_centroid=1: fewer than 39 points per cluster is intended here (see docstring)
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"spherical_kmeans: init centroids have shape {init.shape}, expected {(k, x.shape[1])}")
        nredo = 1
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, nredo=nredo)
    if gpu is not None:
        # the assignment step (the whole cost: n x k inner products per iteration) on one chosen GPU; Kmeans(gpu=True)
        # would spread it over every visible GPU, the other DDP ranks' too
        resources = faiss.StandardGpuResources()
        km.index = faiss.index_cpu_to_gpu(resources, gpu, km.index)
    km.train(x, init_centroids=init)
    _, labels = km.index.search(x, 1)
    labels = labels.reshape(-1).astype(np.int64)
    return (labels, np.array(km.centroids, dtype=np.float32)) if return_centroids else labels


def prototype_rows(labels: np.ndarray, feats: np.ndarray, k: int) -> np.ndarray:
    """(k, d) unit-length mean of `feats` over each cluster's members (zeros for a cluster without members).

    With P^C rows set to scale * prototype, P^C v^C starts as a nearest-prototype classifier whose logits are
    scale * cosine similarities (the embeddings are unit length).
    """
    feats = np.asarray(feats, dtype=np.float32)
    sums = np.zeros((k, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, feats)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


class PseudoLabels:
    """Collects l2norm(v^I + w^I) per caption during an epoch; `recluster` turns them into labels.

    Features are kept as a float32 (n_train_captions, F) array (COCO at F = 1024: 2.3 GB), allocated on first
    use. Pairs not seen in the last epoch (e.g. dropped by drop_last) get label -1 and are ignored by the loss.
    With proto_dim, `collect` also takes the features the classifier reads (CODER: l2norm(v^C + w^C)), kept
    in float16 (only their per-cluster means are used), and `recluster` leaves `self.prototypes` (k, proto_dim)
    and `self.changed` (k,) bool: the clusters whose classifier row should be re-initialised.
    A cluster counts as changed when it is new (first clustering) or fewer than `keep_if` of its members
    carried its id in the previous labels.
    """

    def __init__(self, n_captions: int, dim: int, k: int, niter: int = 25, seed: int = 0, nredo: int = 1,
                 proto_dim: int | None = None, keep_if: float = 0.5):
        self.n, self.dim, self.k, self.niter, self.seed = int(n_captions), int(dim), int(k), int(niter), int(seed)
        self.nredo, self.proto_dim, self.keep_if = int(nredo), proto_dim, float(keep_if)
        self.labels = np.full(self.n, -1, dtype=np.int64)   # used during the current epoch
        self.centroids: np.ndarray | None = None            # (k, dim) of the last clustering: next warm start
        self.prototypes: np.ndarray | None = None
        self.changed = np.zeros(0, dtype=bool)
        self._feats: np.ndarray | None = None
        self._protos: np.ndarray | None = None
        self._seen = np.zeros(self.n, dtype=bool)

    @property
    def ready(self) -> bool:
        return bool((self.labels >= 0).any())

    def collect(self, caption_index, feats, proto_feats=None) -> None:
        idx = np.asarray(caption_index, dtype=np.int64)
        if self._feats is None:
            self._feats = np.zeros((self.n, self.dim), dtype=np.float32)
        self._feats[idx] = np.asarray(feats, dtype=np.float32)
        if self.proto_dim is not None:
            if proto_feats is None:
                raise ValueError("PseudoLabels.collect: proto_feats are required when proto_dim is set")
            if self._protos is None:
                self._protos = np.zeros((self.n, self.proto_dim), dtype=np.float16)
            self._protos[idx] = np.asarray(proto_feats, dtype=np.float16)
        self._seen[idx] = True

    def recluster(self, epoch: int = 0) -> dict:
        """Run k-means on the pairs seen this epoch (warm-started from the last centroids), replace the labels."""
        feats, seen = _all_reduce(self._feats, self._seen)
        protos = None if self._protos is None else _all_reduce(self._protos, self._seen)[0]
        labels = np.full(self.n, -1, dtype=np.int64)
        n_seen = int(seen.sum())
        k = min(self.k, n_seen)
        info = {"pgc_points": n_seen, "pgc_k": k, "pgc_clusters_used": 0, "pgc_same_label": 0.0, "pgc_reinit": 0}
        self.changed = np.zeros(self.k, dtype=bool)
        if n_seen >= 2:
            warm = self.centroids if self.centroids is not None and self.centroids.shape[0] == k else None
            labels[seen], centroids = spherical_kmeans(feats[seen], k, self.niter, seed=self.seed + epoch,
                                                       nredo=self.nredo, init=warm, return_centroids=True)
            prev = self.labels[seen]
            new = labels[seen]
            kept = prev == new
            info["pgc_same_label"] = float(kept.mean())
            info["pgc_clusters_used"] = int(len(np.unique(new)))
            # per cluster: share of its members that already had its id
            members = np.bincount(new, minlength=self.k)
            stayed = np.bincount(new[kept], minlength=self.k)
            self.changed = (members > 0) & (stayed < self.keep_if * members)
            info["pgc_reinit"] = int(self.changed.sum())
            self.centroids = centroids
            if protos is not None:
                self.prototypes = prototype_rows(new, protos[seen], self.k)
        self.labels = labels
        self._seen = np.zeros(self.n, dtype=bool)
        return info

    def state(self) -> dict:
        return {"labels": self.labels.copy(), "k": self.k,
                "centroids": None if self.centroids is None else self.centroids.copy()}

    def load_state(self, d: dict) -> None:
        labels = np.asarray(d["labels"], dtype=np.int64)
        if labels.shape != (self.n,):
            raise ValueError(f"pseudo-label state holds {labels.shape[0]} labels, expected {self.n}")
        self.labels = labels
        self.centroids = None if d.get("centroids") is None else np.asarray(d["centroids"], dtype=np.float32)


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
