"""PGC: K scaling, spherical k-means on separable data, per-caption pseudo labels."""
import numpy as np
import pytest

from itrbench.pgc import PseudoLabels, scaled_k, spherical_kmeans


def test_scaled_k():
    assert scaled_k(10_000, 145_000, 145_000) == 10_000          # paper scale unchanged
    assert scaled_k(10_000, 14_500, 145_000) == 1_000
    assert scaled_k(20_000, 566_435, 566_435) == 20_000
    assert scaled_k(10_000, 100, 145_000) == 7                    # round(6.9)
    assert scaled_k(10_000, 10, 145_000) == 2                     # at least 2
    assert scaled_k(10_000, 40, 400) == 10                        # at most n // 4 (would be 1000)
    with pytest.raises(ValueError):
        scaled_k(10_000, 0, 145_000)


def blobs(n_per=30, k=4, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k] * 5                                   # orthogonal directions: clearly separable on the sphere
    x = np.concatenate([c + rng.normal(scale=0.3, size=(n_per, d)) for c in centres])
    truth = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), truth[perm]


def same_partition(a, b):
    # labels agree up to renaming: a one-to-one map between the two label sets
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separable_clusters():
    x, truth = blobs()
    labels = spherical_kmeans(x, 4, niter=20, seed=1, threads=1, nredo=10)
    assert labels.dtype == np.int64 and labels.shape == (120,)
    assert same_partition(labels, truth)
    # spherical: scaling a point does not change its cluster
    x2 = x * np.random.default_rng(2).uniform(0.1, 10, size=(len(x), 1)).astype(np.float32)
    assert same_partition(spherical_kmeans(x2, 4, niter=20, seed=1, threads=1, nredo=10), truth)
    # deterministic for a seed
    assert np.array_equal(labels, spherical_kmeans(x, 4, niter=20, seed=1, threads=1, nredo=10))


def test_kmeans_caps_k_at_n():
    x, _ = blobs(n_per=2, k=2)
    assert len(set(spherical_kmeans(x, 10, threads=1, nredo=10).tolist())) <= 4


def test_pseudo_labels_epoch_cycle():
    x, truth = blobs(n_per=10, k=3)
    pl = PseudoLabels(n_captions=40, dim=x.shape[1], k=3, niter=20, seed=0, nredo=10)
    assert not pl.ready and (pl.labels == -1).all()
    idx = np.arange(30)[::-1]                                   # caption ids in any order; 30..39 never seen
    for start in range(0, 30, 8):
        pl.collect(idx[start:start + 8], x[start:start + 8])
    info = pl.recluster(epoch=0)
    assert info["pgc_points"] == 30 and pl.ready
    assert (pl.labels[30:] == -1).all()
    assert same_partition(pl.labels[idx], truth)
    # the next epoch starts a fresh collection; the labels stay until the next recluster
    state = pl.state()
    pl2 = PseudoLabels(40, x.shape[1], 3)
    pl2.load_state(state)
    assert np.array_equal(pl2.labels, pl.labels)
    pl.recluster(epoch=1)                                       # nothing collected -> no labels
    assert not pl.ready
