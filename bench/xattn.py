"""Cross-attention scoring: batched blocked scorer vs. the per-caption loop (SPEC §7), AsCL's or SCAN's.

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

`--method scan` times SCAN's real scorer instead (methods/scan: t-i, i-t and their ensemble, each with its paper λ)
against SCAN's own per-caption loop (the authors' xattn_score: one caption repeated for every image, attended
vectors of width F formed explicitly), on l2-normalised random features:

    python bench/xattn.py --method scan --dim 32 --regions 8      # the toy shape (model.embed_dim 32, 8 regions)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from itrbench.methods.ascl.scoring import CrossAttentionFusion, fused_scores, reference_scores, useful_flops  # noqa: E402
from itrbench.methods.scan.attention import blocked_scores  # noqa: E402
from itrbench.models.encoders import l2norm  # noqa: E402

# SCAN's single models as its paper's Flickr30K / MS-COCO ensembles use them: (direction, λ1, pooling, λ2)
SCAN_MODELS = {"t2i AVG": ("t2i", 9.0, "avg", 6.0), "t2i LSE": ("t2i", 9.0, "lse", 6.0), "i2t AVG": ("i2t", 4.0, "avg", 5.0)}
SCAN_SLOPE = 0.1  # the authors' LeakyReLU(0.1)


def scan_caption_loop(regions, words, mask, direction, lam1, pooling, lam2, slope=SCAN_SLOPE):
    """SCAN's xattn_score_t2i / _i2t structure, written out: per caption, its real words repeated for every image,
    cosines, clipped l2 norm over the queries, softmax over the context, attended vectors (width F), cosine, pool."""
    cols = []
    n_img = regions.shape[0]
    for c in range(words.shape[0]):
        w = words[c][mask[c]].unsqueeze(0).expand(n_img, -1, -1)                   # (n_img, L, F)
        query, context = (w, regions) if direction == "t2i" else (regions, w)
        attn = torch.nn.functional.leaky_relu(context @ query.transpose(1, 2), slope)  # (n_img, B, A)
        attn = attn / attn.norm(dim=2, keepdim=True).clamp_min(1e-8)               # over the queries
        attn = torch.softmax(lam1 * attn.transpose(1, 2), dim=2)                    # (n_img, A, B): over the context
        attended = attn @ context                                                   # (n_img, A, F)
        r = torch.nn.functional.cosine_similarity(query, attended, dim=2, eps=1e-8)
        cols.append(r.mean(1) if pooling == "avg" else torch.logsumexp(lam2 * r, dim=1) / lam2)
    return torch.stack(cols, 1)


def main_scan(args, device) -> int:
    bi = args.block_images or (128 if device.type == "cuda" else 32)
    bc = args.block_captions or (256 if device.type == "cuda" else 128)
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(np.round(rng.normal(15, 5, args.captions)), 7, args.max_len).astype(int)
    regions = l2norm(torch.randn(args.images, args.regions, args.dim, device=device))
    mask = torch.arange(args.max_len, device=device)[None, :] < torch.as_tensor(lengths, device=device)[:, None]
    words = l2norm(torch.randn(args.captions, args.max_len, args.dim, device=device)) * mask[..., None]
    n_loop = min(args.loop_captions, args.captions)
    print(f"SCAN, shape: {args.images} images x {args.captions} captions, K={args.regions}, F={args.dim}, mean caption "
          f"length {lengths.mean():.1f}, blocks {bi}x{bc}, device {device}, threads {torch.get_num_threads()}")
    times = {}
    with torch.no_grad():
        for name, (direction, lam1, pooling, lam2) in SCAN_MODELS.items():
            blocked_scores(regions[:bi], words[:bc], mask[:bc], direction, lam1, pooling, lam2, SCAN_SLOPE,
                           block_images=bi, block_captions=bc)
            fast, t_fast = timed(lambda: blocked_scores(regions, words, mask, direction, lam1, pooling, lam2, SCAN_SLOPE,
                                                        block_images=bi, block_captions=bc), device, args.reps)
            loop, t_loop = timed(lambda: scan_caption_loop(regions, words[:n_loop], mask[:n_loop], direction, lam1,
                                                           pooling, lam2), device)
            diff = (fast[:, :n_loop] - loop).abs().max().item()
            pairs, pairs_loop = args.images * args.captions / t_fast, args.images * n_loop / t_loop
            times[name] = (t_fast / (args.images * args.captions), t_loop / (args.images * n_loop), diff)
            print(f"{name}: batched {pairs:,.0f} pairs/s, per-caption loop {pairs_loop:,.0f} pairs/s, "
                  f"x{pairs / pairs_loop:.1f}, max_abs_diff={diff:.1e}")
    # the ensembles score each pair with both of their models
    for ens, parts in (("F30K ensemble (t2i AVG + i2t AVG)", ("t2i AVG", "i2t AVG")),
                       ("COCO ensemble (t2i LSE + i2t AVG)", ("t2i LSE", "i2t AVG"))):
        fast, loop = sum(times[p][0] for p in parts), sum(times[p][1] for p in parts)
        print(f"{ens}: batched {1 / fast:,.0f} pairs/s, loop {1 / loop:,.0f} pairs/s; toy-coco 5K estimate "
              f"{125e6 * fast:.0f} s batched, {125e6 * loop:.0f} s loop")
    diff = max(t[2] for t in times.values())
    fast, loop = times["t2i LSE"][0] + times["i2t AVG"][0], times["t2i LSE"][1] + times["i2t AVG"][1]
    print(f"speedup={loop / fast:.1f} max_abs_diff={diff:.2e}")
    return 0


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
    p.add_argument("--method", choices=["ascl", "scan"], default="ascl", help="whose scorer to time")
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
    torch.manual_seed(args.seed)
    if args.method == "scan":
        return main_scan(args, device)
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
