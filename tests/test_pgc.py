"""PGC: K scaling, spherical k-means on separable data, per-caption pseudo labels."""
import numpy as np
import pytest

from itrbench.methods.coder.pgc import PseudoLabels, scaled_k, spherical_kmeans


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


def test_same_points_keep_their_labels_across_epochs():
    """Warm start: unchanged features -> every point keeps its id, even where a fresh k-means would renumber."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)).astype(np.float32)             # no true clusters: ids are arbitrary
    pl = PseudoLabels(400, 8, k=20, niter=20, seed=0)
    for epoch in range(3):
        pl.collect(np.arange(400), x)
        info = pl.recluster(epoch)
        if epoch == 0:
            first = pl.labels.copy()
            assert info["pgc_reinit"] == len(np.unique(first))   # every cluster is new: all rows initialised
        else:
            assert np.array_equal(pl.labels, first)
            assert info["pgc_same_label"] == 1.0 and info["pgc_reinit"] == 0 and not pl.changed.any()
    # a fresh clustering (another seed, no warm start) of the same points does renumber them: what the warm
    # start prevents
    fresh = spherical_kmeans(x, 20, niter=20, seed=1, threads=1)
    assert (fresh == first).mean() < 0.5
    # slightly moved features keep almost every id; the state carries the centroids for a resumed run
    pl2 = PseudoLabels(400, 8, k=20, niter=20, seed=5)
    pl2.load_state(pl.state())
    pl2.collect(np.arange(400), x + rng.normal(scale=0.02, size=x.shape).astype(np.float32))
    assert pl2.recluster(3)["pgc_same_label"] > 0.9


def test_changed_clusters_and_prototypes():
    x, truth = blobs(n_per=20, k=4)
    protos = np.roll(x, 3, axis=1)                               # classifier features: another view of each point
    pl = PseudoLabels(80, x.shape[1], k=4, niter=20, seed=0, nredo=10, proto_dim=x.shape[1])
    with pytest.raises(ValueError, match="proto_feats"):
        pl.collect(np.arange(80), x)
    pl.collect(np.arange(80), x, protos)
    pl.recluster(0)
    assert pl.changed.all() and pl.prototypes.shape == (4, x.shape[1])
    for j in range(4):                                           # unit mean of the members' classifier features
        m = protos[pl.labels == j].mean(0)
        assert np.allclose(pl.prototypes[j], m / np.linalg.norm(m), atol=1e-3)
    # renaming the labels behind its back: every cluster's members carried other ids -> all re-formed
    pl.labels = (pl.labels + 1) % 4
    pl.centroids = np.roll(pl.centroids, 1, axis=0)
    pl.collect(np.arange(80), x, protos)
    pl.recluster(1)
    assert pl.changed.sum() == 0                                 # warm start followed the renamed centroids
    pl.labels = (pl.labels + 1) % 4                              # now only the labels move: ids disagree
    pl.collect(np.arange(80), x, protos)
    info = pl.recluster(2)
    assert pl.changed.all() and info["pgc_reinit"] == 4 and info["pgc_same_label"] == 0.0


def pgc_epochs(stable: bool, k=12, d=16, n=360, epochs=5):
    """Clustered features that drift a little every epoch and a linear P^C trained on last epoch's labels with
    two CE terms, as L_PGC. stable=False imitates the old behaviour: ids renumbered every epoch, rows kept."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d))
    z = rng.integers(0, k, n)
    v = centres[z] + 0.4 * rng.normal(size=(n, d))
    w = centres[z] + 0.4 * rng.normal(size=(n, d))
    torch.manual_seed(0)
    head = torch.nn.Linear(d, k, bias=False)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    pl = PseudoLabels(n, d, k, niter=20, seed=0, proto_dim=d)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    losses = []
    for epoch in range(epochs):
        drift = 0.05 * rng.normal(size=(n, d))
        ve, we = unit(v + drift), unit(w + drift)
        pl.collect(np.arange(n), unit(ve + we), unit(ve + we))
        if pl.ready:
            tv, tw = torch.tensor(ve, dtype=torch.float32), torch.tensor(we, dtype=torch.float32)
            y = torch.as_tensor(pl.labels)
            epoch_loss = []
            for idx in torch.randperm(n).split(40):
                loss = F.cross_entropy(head(tv[idx]), y[idx]) + F.cross_entropy(head(tw[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                epoch_loss.append(loss.item())
            losses.append(float(np.mean(epoch_loss)))
        pl.recluster(epoch)
        if stable:
            rows = np.flatnonzero(pl.changed)
            with torch.no_grad():
                head.weight[rows] = 10.0 * torch.as_tensor(pl.prototypes[rows])
        else:
            pl.labels = rng.permutation(k)[pl.labels]
    return losses


def test_pgc_loss_falls_well_below_chance_with_stable_labels():
    chance = 2 * np.log(12)
    stable = pgc_epochs(stable=True)
    assert stable[-1] < 0.25 * chance, stable
    # the same run with ids renumbered every epoch and rows kept (the old behaviour) stays near chance
    renumbered = pgc_epochs(stable=False)
    assert renumbered[-1] > 0.6 * chance, renumbered
