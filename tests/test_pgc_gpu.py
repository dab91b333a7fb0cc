"""PGC's k-means device: a GPU faiss build on a CUDA run clusters on the run's GPU, otherwise the CPU."""
import types

import numpy as np
import pytest

from itrbench.methods.coder import pgc


def fake_faiss(n_gpus: int, calls: list):
    """The real faiss, except that it reports `n_gpus` GPUs and records (but does not do) the move to a GPU."""
    import faiss

    def index_cpu_to_gpu(resources, device, index):
        calls.append(device)
        return index  # the CPU index stands in for the GPU copy: the rest of the procedure runs as usual

    return types.SimpleNamespace(**{n: getattr(faiss, n) for n in ("Kmeans", "omp_set_num_threads")},
                                 get_num_gpus=lambda: n_gpus, StandardGpuResources=lambda: object(),
                                 index_cpu_to_gpu=index_cpu_to_gpu)


@pytest.mark.parametrize("n_gpus, torch_device, use_gpu, want", [
    (1, 0, None, 0),        # GPU faiss, the run trains on cuda:0 -> GPU 0
    (2, 1, None, 1),        # DDP rank on cuda:1 -> its own GPU
    (1, None, None, None),  # GPU faiss but a CPU run (CUDA not initialised) -> CPU
    (0, 0, None, None),     # faiss-cpu (0 GPUs) on a CUDA run -> CPU
    (1, None, True, 0),     # forced
    (1, 0, False, None),    # forced off
])
def test_kmeans_device_choice(monkeypatch, n_gpus, torch_device, use_gpu, want):
    monkeypatch.setattr(pgc, "_torch_cuda_device", lambda: torch_device)
    assert pgc.kmeans_gpu(fake_faiss(n_gpus, []), use_gpu) == want


def test_forcing_a_gpu_without_gpu_faiss_is_one_clear_error(monkeypatch):
    with pytest.raises(RuntimeError, match="use_gpu=True, but faiss sees no GPU"):
        pgc.kmeans_gpu(fake_faiss(0, []), True)
    assert pgc.kmeans_gpu(types.SimpleNamespace(), None) is None  # a faiss without GPU functions at all


def mixture(n=2000, k=20, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(scale=0.6, size=(n, d))).astype(np.float32)


def test_spherical_kmeans_moves_the_index_to_the_chosen_gpu(monkeypatch):
    """The whole path with a fake GPU faiss: asked for device 0 once, and the labels are the CPU procedure's."""
    import sys

    x = mixture()
    cpu = pgc.spherical_kmeans(x, 20, niter=10, seed=3, threads=1)
    calls = []
    monkeypatch.setitem(sys.modules, "faiss", fake_faiss(1, calls))
    monkeypatch.setattr(pgc, "_torch_cuda_device", lambda: 0)
    labels = pgc.spherical_kmeans(x, 20, niter=10, seed=3, threads=1)
    assert calls == [0] and np.array_equal(labels, cpu)
    calls.clear()
    monkeypatch.setattr(pgc, "_torch_cuda_device", lambda: None)  # a CPU run: nothing moves
    pgc.spherical_kmeans(x, 20, niter=10, seed=3, threads=1)
    assert calls == []


def _gpu_faiss() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


@pytest.mark.skipif(not _gpu_faiss(), reason="needs a GPU faiss build that sees a CUDA device (`pip install -e .[gpu]`, "
                                              "see docs/coder.md); faiss-cpu or no GPU here")
def test_gpu_and_cpu_kmeans_agree_on_a_fixed_seed():
    x = mixture(n=20000, k=50, d=64, seed=1)
    for warm in (None, pgc.spherical_kmeans(x, 50, niter=5, seed=0, threads=1, use_gpu=False, return_centroids=True)[1]):
        cpu, c_cpu = pgc.spherical_kmeans(x, 50, niter=20, seed=7, use_gpu=False, init=warm, return_centroids=True)
        gpu, c_gpu = pgc.spherical_kmeans(x, 50, niter=20, seed=7, use_gpu=True, init=warm, return_centroids=True)
        # same initial centroids (sampled on the host with the seed, or given), so the same ids; float summation
        # order differs between devices, so a point on a boundary may flip
        assert (cpu == gpu).mean() > 0.99
        assert np.abs(c_cpu - c_gpu).max() < 1e-3
