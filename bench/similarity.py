"""Dual-encoder similarity + ranking at COCO-5K shape vs. this machine's float32 matmul rate (SPEC §7).

Measures, in one run and interleaved (so background load hits both alike), the best-of-N time of
  * torch.mm on a 4096^2 square and on the COCO-5K shape itself (5,000 x 1,024 @ 1,024 x 25,000): the
    machine's float32 matmul rate is the faster of the two;
  * `itrbench.evaluation.evaluate_embeddings(img, cap, "coco_5k")`: embeddings -> metric dict, ranking included.
Useful rate = 2 * 5000 * 25000 * 1024 / time. Prints `fraction_of_matmul=X` last (goal >= 0.7).

    PYTHONPATH=src python bench/similarity.py [--repeats 3] [--device cpu] [--threads N] [--block B]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from itrbench.evaluation import evaluate_embeddings, evaluate_protocol


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--block", type=int, default=None, help="images per tile (default: the library's)")
    ap.add_argument("--no-check", action="store_true", help="skip the check against the materialised matrix")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_img, n_cap, dim = args.images, args.images * args.captions_per_image, args.dim
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1).to(device)
    cap = torch.nn.functional.normalize(torch.randn(n_cap, dim, generator=g), dim=1).to(device)
    sq = torch.randn(4096, 4096, generator=g).to(device)
    sq_out = torch.empty_like(sq)
    full_out = torch.empty(n_img, n_cap, device=device)

    t_sq, t_full, t_eval = [], [], []
    metrics = None
    for _ in range(args.repeats):
        t_sq.append(_timed(lambda: torch.mm(sq, sq, out=sq_out), device))
        t_full.append(_timed(lambda: torch.mm(img, cap.T, out=full_out), device))
        box = {}
        t_eval.append(_timed(lambda: box.update(m=evaluate_embeddings(img, cap, "coco_5k", args.block)), device))
        metrics = box["m"]

    flop_sq = 2 * 4096 ** 3
    flop = 2 * n_img * n_cap * dim
    gf_sq = flop_sq / min(t_sq) / 1e9
    gf_full = flop / min(t_full) / 1e9
    matmul_gf = max(gf_sq, gf_full)
    useful_gf = flop / min(t_eval) / 1e9
    print(f"device={device} threads={torch.get_num_threads()} shape={n_img}x{n_cap}x{dim} repeats={args.repeats}")
    print(f"matmul_4096_gflops={gf_sq:.1f}")
    print(f"matmul_same_shape_gflops={gf_full:.1f} ({min(t_full):.3f} s)")
    print(f"eval_seconds={min(t_eval):.3f} (all: {', '.join(f'{t:.3f}' for t in t_eval)})")
    print(f"useful_gflops={useful_gf:.1f}")
    print(f"coco_5k rsum={metrics['rsum']:.2f} (random embeddings: near chance)")
    if not args.no_check:
        # the fused path must give the metrics of the materialised matrix (random data: no ties to round)
        torch.mm(img, cap.T, out=full_out)
        ref = evaluate_protocol(full_out.cpu().numpy(), "coco_5k")
        agree = all(np.isclose(ref[k], metrics[k]) for k in ref)
        print(f"agrees_with_materialised={agree}")
    print(f"fraction_of_matmul={useful_gf / matmul_gf:.3f}")


if __name__ == "__main__":
    main()
