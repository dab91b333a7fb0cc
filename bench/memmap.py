"""Benchmark: resident memory of one training epoch over a region-feature file larger than 4 GB.

SPEC §7: region features are memory-mapped and resident memory must not grow with the data set size
(SCAN loads train_ims.npy whole: ~62 GB of RAM for COCO). This script writes (if absent) a float32
`train_ims.npy` of 15,000 x 36 x 2048 (4.4 GB) plus 5 captions per image into `--dir`, then iterates one
shuffled epoch (batch 128) through CaptionDataset + make_loader and reports the peak resident set size of
this process next to the file size.

Disk: needs ~4.5 GB free in --dir (default: a new folder under the system temp dir), removed at the end
unless --keep. The file is written by a child process so its buffers do not count towards this
process's peak. Usage:  PYTHONPATH=src python bench/memmap.py [--dir D] [--keep] [--workers N]
Last line: peak_rss_mb=X file_mb=Y ratio=Z   (ratio = peak RSS / file size; SCAN's loader gives > 1).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

DATASET = "bench"


def write_data(folder: Path, n_images: int, n_regions: int, dim: int) -> None:
    """Write train_ims.npy / train_caps.txt with plain file writes (no mapping, bounded buffers)."""
    from itrbench.utils import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chunk = 256
    block = rng.random((chunk, n_regions, dim), dtype=np.float32)
    with atomic_path(folder / "train_ims.npy") as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (n_images, n_regions, dim)})
        for start in range(0, n_images, chunk):
            n = min(chunk, n_images - start)
            block[:, 0, 0] = np.arange(start, start + chunk)  # rows differ, content is irrelevant
            f.write(block[:n].tobytes())
    with atomic_path(folder / "train_caps.txt") as tmp:
        tmp.write_text("".join(f"caption {k} of image {i} in the benchmark\n" for i in range(n_images) for k in range(5)))


class RssSampler(threading.Thread):
    """Polls the resident set size (total and anonymous) every `interval` seconds; keeps the peaks."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.peak_anon = 0
        self.stop = threading.Event()

    def anon(self) -> int:
        try:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        rss = self.proc.memory_info().rss
        children = self.proc.children(recursive=True)
        if children:
            # DataLoader workers share pages with this process (fork): add proportional set sizes instead,
            # so shared libraries and shared page-cache mappings are counted once
            rss = self._pss(self.proc)
            for child in children:
                rss += self._pss(child)
        self.peak = max(self.peak, rss)
        self.peak_anon = max(self.peak_anon, self.anon())

    @staticmethod
    def _pss(proc) -> int:
        try:
            return getattr(proc.memory_full_info(), "pss", None) or proc.memory_info().rss
        except Exception:  # a worker that just exited
            return 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="data folder (default: a new temp folder)")
    ap.add_argument("--images", type=int, default=15_000)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--max-batches", type=int, default=None, help="stop early (smoke test)")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    args = ap.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="itrbench-memmap-"))
    folder = root / f"{DATASET}_precomp"
    try:
        ims = folder / "train_ims.npy"
        if not ims.exists():
            need = args.images * args.regions * args.dim * 4
            free = shutil.disk_usage(root if root.exists() else root.parent).free
            if free < need * 1.05:
                print(f"not enough disk in {root}: need {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
                return 1
            t = time.perf_counter()
            # spawn: the writer's memory is its own, not part of this process's peak
            p = mp.get_context("spawn").Process(target=write_data, args=(folder, args.images, args.regions, args.dim))
            p.start()
            p.join()
            if p.exitcode:
                return p.exitcode
            print(f"wrote {ims} in {time.perf_counter() - t:.1f} s")

        import torch  # noqa: F401  (imported before the baseline so its own footprint is not "growth")

        from itrbench.data.dataset import CaptionDataset, make_loader
        from itrbench.data.precomp import open_split

        sampler = RssSampler()
        split = open_split(root, DATASET, "train")
        dataset = CaptionDataset(split)
        loader = make_loader(dataset, args.batch_size, shuffle=True, seed=0, num_workers=args.workers)
        sampler.sample()
        baseline = sampler.peak
        sampler.start()
        t = time.perf_counter()
        n_items = n_batches = 0
        checksum = 0.0
        for batch in loader:
            n_items += len(batch["captions"])
            n_batches += 1
            checksum += float(batch["regions"][:, 0, 1].sum())  # touch the data so nothing is optimised away
            if args.max_batches and n_batches >= args.max_batches:
                break
        seconds = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        # ru_maxrss (KiB on Linux) catches peaks between samples; it covers this process only
        peak = max(sampler.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if args.workers:
            print(f"peak sums the proportional set size (PSS) of this process and its {args.workers} workers")
        file_mb = ims.stat().st_size / 2**20
        print(f"epoch: {n_batches} batches, {n_items} captions in {seconds:.1f} s "
              f"({n_items / seconds:.0f} items/s, {n_items * split.images.strides[0] / seconds / 2**30:.2f} GiB/s), "
              f"workers={args.workers}")
        print(f"baseline_rss_mb={baseline / 2**20:.0f} (after importing torch and opening the split) "
              f"peak_anon_mb={sampler.peak_anon / 2**20:.0f} growth_mb={(peak - baseline) / 2**20:.0f}")
        print(f"peak_rss_mb={peak / 2**20:.0f} file_mb={file_mb:.0f} ratio={peak / 2**20 / file_mb:.3f}")
        return 0
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            if args.dir is None:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
