"""AsCL cross-attention scoring: batched blocked scorer vs. the per-caption loop (SPEC §7).

Same inputs for both: random fusion weights, n_images x K projected regions, n_captions captions whose token
lengths follow ToyScenes' (MiniLM tokens, ~7-31, mean ~15). The loop (one caption against every image, as
SCAN's xattn_score) is timed on a subset of captions when it is slow. Prints pairs/s of both, the batched
scorer's useful FLOP rate as a fraction of a float32 matmul rate measured in this run, an estimate for a
toy-coco 5K evaluation, and last `speedup=X max_abs_diff=Y`. The batched scorer is timed eagerly and, unless
--compile off, through torch.compile (fused_scores(compile=True)) in the same run: its first call's extra time
(compiling every length bucket it needs) is reported and added to its toy-coco estimate; the last line is then the
compiled scorer's.

    python bench/xattn.py              # defaults: toy regions (K=12), model.embed_dim 256, ascl.heads 1
    python bench/xattn.py --dim 64     # a smaller toy width
    python bench/xattn.py --dim 1024 --regions 36 --images 256 --captions 256 --loop-captions 8   # paper shape
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from itrbench.scoring import CrossAttentionFusion, fused_scores, reference_scores, useful_flops  # noqa: E402


def matmul_rate(device, n: int = 1536, reps: int = 5) -> float:
    """float32 GEMM FLOP/s of this machine right now (best of `reps`)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int = 1):
    best, out = float("inf"), None
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--captions", type=int, default=2000)
    p.add_argument("--regions", type=int, default=12)
    p.add_argument("--dim", type=int, default=256, help="joint width D (run config model.embed_dim)")
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--max-len", type=int, default=32)
    p.add_argument("--loop-captions", type=int, default=50, help="captions the per-caption loop scores")
    p.add_argument("--block-images", type=int, default=None)
    p.add_argument("--block-captions", type=int, default=None)
    p.add_argument("--reps", type=int, default=2, help="timed repetitions of the batched scorer (best kept)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", choices=["both", "off"], default="both",
                   help="also time the torch.compile'd scorer (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bi = args.block_images or (256 if cuda else 32)
    bc = args.block_captions or (512 if cuda else 64)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(np.round(rng.normal(15, 5, args.captions)), 7, args.max_len).astype(int)
    fusion = CrossAttentionFusion(args.dim, args.heads, u1=0.6).to(device).eval()
    regions = torch.randn(args.images, args.regions, args.dim, device=device)
    glob = torch.randn(args.images, args.dim, device=device)
    mask = torch.arange(args.max_len, device=device)[None, :] < torch.as_tensor(lengths, device=device)[:, None]
    words = torch.randn(args.captions, args.max_len, args.dim, device=device) * mask[..., None]
    n_loop = min(args.loop_captions, args.captions)

    print(f"shape: {args.images} images x {args.captions} captions, K={args.regions}, D={args.dim}, H={args.heads}, "
          f"mean caption length {lengths.mean():.1f} (max {lengths.max()}), blocks {bi}x{bc}, "
          f"device {device}, threads {torch.get_num_threads()}")
    def batched(compile):
        return fused_scores(fusion, regions, glob, words, mask, block_images=bi, block_captions=bc, autocast=False,
                            compile=compile)

    with torch.no_grad():
        rate = matmul_rate(device)
        fused_scores(fusion, regions[:bi], glob[:bi], words[:bc], mask[:bc], block_images=bi, block_captions=bc,
                     compile=False)
        fast, t_fast = timed(lambda: batched(False), device, args.reps)
        runs = [("batched scorer (eager)", fast, t_fast, 0.0)]
        if args.compile != "off" and not cuda:
            # first call = compile every length bucket + one scoring; later calls reuse the compiled kernels
            _, t_first = timed(lambda: batched(True), device)
            comp, t_comp = timed(lambda: batched(True), device, args.reps)
            runs.append(("batched scorer (compiled)", comp, t_comp, max(t_first - t_comp, 0.0)))
        loop, t_loop = timed(lambda: reference_scores(fusion, regions, glob, words[:n_loop], mask[:n_loop]), device)
        rate_after = matmul_rate(device)
    rate = max(rate, rate_after)
    pairs_loop = args.images * n_loop / t_loop
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s (float32)")
    print(f"per-caption loop: {pairs_loop:,.0f} pairs/s ({t_loop:.2f} s on {n_loop} captions); toy-coco 5K "
          f"estimate {125e6 / pairs_loop:.0f} s")
    base = None
    for name, scores, t, t_compile in runs:
        pairs = args.images * args.captions / t
        base = base or pairs
        flops = useful_flops(args.images, lengths.tolist(), args.regions, args.dim, args.heads) / t
        diff = (scores[:, :n_loop] - loop).abs().max().item()
        extra = f" + {t_compile:.1f} s compile (first call)" if name.endswith("(compiled)") else ""
        print(f"{name}: {pairs:,.0f} pairs/s ({t:.2f} s{extra}); useful {flops / 1e9:.1f} GFLOP/s = "
              f"{100 * flops / rate:.1f}% of the matmul rate; x{pairs / base:.2f} vs eager; max_abs_diff={diff:.2e}")
        print(f"  toy-coco 5K estimate (5,000 x 25,000 pairs, this shape): {125e6 / pairs + t_compile:.0f} s"
              + (" incl. compile" if extra else ""))
    print(f"speedup={pairs / pairs_loop:.1f} max_abs_diff={diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
