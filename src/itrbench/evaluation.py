"""Retrieval evaluation: ranks, Recall@K, the F30K/COCO protocols, and model-level encode + score.

Protocol decisions (ties, medr, folds, timing) are written down in docs/evaluation.md.

Ranking never sorts. The 0-based rank of a positive is the number of *negatives* scoring at least as high
as it (ties count against the positive: pessimistic), so one comparison pass per similarity tile gives
every rank. Tiles are (image block x the captions of an image block); the diagonal tiles, which hold every
positive pair, are visited first so that the positive scores are known before the off-diagonal tiles are
counted. The same tiled pass serves a given matrix (`recall_at_k`) and a dual encoder whose tiles are
computed on the fly and never stored whole (`evaluate_embeddings`).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from itrbench.errors import ConfigError, DataError

PROTOCOLS = ("f30k_1k", "coco_1k", "coco_5k")
COCO_1K_FOLDS = 5

# Tiles are `block` images x the captions of `block` images. All tiles but the ragged last ones have one
# shape, so one matmul kernel computes every score and identical embeddings give bit-identical scores
# (exact ties stay ties). On CPU each worker thread owns whole tiles (single-threaded kernels): a
# (256 x 1280) float32 tile is 1.3 MB, so its comparison passes read it from that core's cache right after
# the matmul wrote it, and there is no fork/join per small op (which collapses when the machine is
# shared). GPUs want bigger tiles and one stream.
_CPU_BLOCK = 256
_CUDA_BLOCK = 2048

TileFn = Callable[[int, int, int, int], torch.Tensor]


# --------------------------------------------------------------------------------------------- ranks
def _tiled_ranks(make_tile: Callable[[], TileFn], n_img: int, cpi: int, block: int, device,
                 workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """i2t ranks (n_img,) and t2i ranks (n_img * cpi,), 0-based, counted tile by tile.

    `make_tile()` gives each worker its own `tile(i0, i1, c0, c1)` -> sims[i0:i1, c0:c1] (at most
    block x block * cpi); a returned tile is consumed before the next call, so a producer may reuse one
    buffer. Every matrix entry is requested exactly once.
    """
    n_cap = n_img * cpi
    bounds = [(a, min(a + block, n_img)) for a in range(0, n_img, block)]
    side = bounds[0][1]
    thresholds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image block -> (p (m, 1), q (1, m * cpi))

    def run(tiles: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tile = make_tile()
        # one reused bool buffer and int32 sums: measurably cheaper than fresh bool tensors + int64 sums
        flags = torch.empty(side * side * cpi, dtype=torch.bool, device=device)
        i2t = torch.zeros(n_img, dtype=torch.int64, device=device)
        t2i = torch.zeros(n_cap, dtype=torch.int64, device=device)

        def count_ge(t, thr, dim):
            return torch.ge(t, thr, out=flags[: t.numel()].view(t.shape)).sum(dim, dtype=torch.int32)

        for r, c in tiles:
            a, b = bounds[r]
            ca, cb = bounds[c]
            t = tile(a, b, ca * cpi, cb * cpi)
            if r == c:
                # a diagonal tile holds its images' positives: (m, m, cpi) view whose diagonal over the
                # first two dims is each image's own captions; clone, as `t` may be a reused buffer
                m = b - a
                pos = torch.diagonal(t.unflatten(1, (m, cpi)), dim1=0, dim2=1).T.clone()  # (m, cpi)
                p, q = pos.amax(1, keepdim=True), pos.reshape(1, -1)
                thresholds[r] = (p, q)
                # the counts include the positives themselves: subtract them
                i2t[a:b] += count_ge(t, p, 1) - (pos >= p).sum(1)
                t2i[ca * cpi:cb * cpi] += count_ge(t, q, 0) - 1
            else:  # only negatives; the diagonal tiles were all done before
                i2t[a:b] += count_ge(t, thresholds[r][0], 1)
                t2i[ca * cpi:cb * cpi] += count_ge(t, thresholds[c][1], 0)
        return i2t, t2i

    diagonal = [(r, r) for r in range(len(bounds))]
    off_diagonal = [(r, c) for r in range(len(bounds)) for c in range(len(bounds)) if r != c]
    workers = max(1, min(workers, len(diagonal)))
    if workers == 1:
        parts = [run(diagonal), run(off_diagonal)]
    else:
        # each worker runs single-threaded kernels on its own tiles; restored afterwards. Note that
        # torch.set_num_threads is process-wide, so other threads' torch ops run single-threaded meanwhile.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(run, [diagonal[k::workers] for k in range(workers)]))
                parts += list(pool.map(run, [off_diagonal[k::workers] for k in range(workers)]))
        finally:
            torch.set_num_threads(threads)
    return sum(x[0] for x in parts), sum(x[1] for x in parts)


def _workers(device) -> int:
    return 1 if torch.device(device).type != "cpu" else torch.get_num_threads()


def _default_block(device, block: int | None) -> int:
    block = block or (_CUDA_BLOCK if torch.device(device).type == "cuda" else _CPU_BLOCK)
    if block < 1:
        raise ConfigError(f"block: expected a positive number of images per tile, got {block}")
    return block


def _as_tensor(sims) -> torch.Tensor:
    if isinstance(sims, torch.Tensor):
        s = sims.detach()
    else:
        arr = np.asarray(sims)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        with warnings.catch_warnings():  # read-only (e.g. memory-mapped) arrays: we never write to them
            warnings.simplefilter("ignore", UserWarning)
            s = torch.from_numpy(arr)
    if not s.is_floating_point():
        s = s.double()
    if s.ndim != 2 or s.shape[0] == 0:
        raise DataError(f"sims: expected a non-empty 2-D (n_images, n_captions) matrix, got shape {tuple(s.shape)}")
    return s


def _check_cpi(n_img: int, n_cap: int, cpi: int, what: str = "sims") -> None:
    if cpi < 1 or n_cap != n_img * cpi:
        raise DataError(
            f"{what}: expected n_captions = {cpi} x n_images = {n_img * cpi} (captions_per_image={cpi}), got {n_cap}"
        )


def retrieval_ranks(sims, captions_per_image: int = 5, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t ranks (n_images,) and t2i ranks (n_captions,) of a similarity matrix (numpy or torch).

    i2t: number of other images' captions scoring >= the image's best own caption.
    t2i: number of other images scoring >= the caption's own image.
    """
    s = _as_tensor(sims)
    n_img, n_cap = s.shape
    _check_cpi(n_img, n_cap, captions_per_image)
    if torch.isnan(s).any():
        raise DataError("sims: contains NaN; expected finite similarities")
    block = _default_block(s.device, block)
    i2t, t2i = _tiled_ranks(lambda: (lambda a, b, c0, c1: s[a:b, c0:c1]), n_img, captions_per_image, block,
                            s.device, _workers(s.device))
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def metrics_from_ranks(i2t_ranks, t2i_ranks, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """R@K (percent), rsum, medr = floor(median rank) + 1, meanr = mean rank + 1, from 0-based ranks."""
    _check_ks(ks)
    i2t = np.asarray(i2t_ranks)
    t2i = np.asarray(t2i_ranks)
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(r < k))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_medr"] = float(math.floor(np.median(r)) + 1)
        out[f"{name}_meanr"] = float(r.mean() + 1)
    return out


def _check_ks(ks) -> None:
    if len(ks) == 0 or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ConfigError(f"ks: expected positive integers, got {tuple(ks)!r}")


def recall_at_k(sims, captions_per_image: int = 5, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Retrieval metrics of one (n_images, n_captions) similarity matrix; caption j belongs to image j // cpi.

    Keys: i2t_r{k}, t2i_r{k} for k in ks (percent), rsum (sum of all of them), i2t_medr, i2t_meanr,
    t2i_medr, t2i_meanr. Ties between a positive and negatives count against the positive.
    """
    _check_ks(ks)
    i2t, t2i = retrieval_ranks(sims, captions_per_image)
    return metrics_from_ranks(i2t, t2i, ks)


# ----------------------------------------------------------------------------------------- protocols
def protocol_folds(protocol: str, n_images: int, n_captions: int) -> tuple[list[tuple[slice, slice]], int]:
    """(image slice, caption slice) per fold and captions_per_image, for a protocol on a split of this size."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"eval protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if n_images < 1 or n_captions % n_images:
        raise DataError(
            f"sims: expected n_captions to be a multiple of n_images (5 per image, or 1:1), "
            f"got {n_images} images and {n_captions} captions"
        )
    cpi = n_captions // n_images
    if protocol != "coco_1k":
        return [(slice(0, n_images), slice(0, n_captions))], cpi
    if n_images % COCO_1K_FOLDS:
        raise DataError(f"coco_1k: expected n_images divisible by {COCO_1K_FOLDS} folds, got {n_images}")
    f = n_images // COCO_1K_FOLDS
    return [(slice(i * f, (i + 1) * f), slice(i * f * cpi, (i + 1) * f * cpi)) for i in range(COCO_1K_FOLDS)], cpi


def average_metrics(per_fold: list[dict]) -> dict:
    """Average every metric over folds; rsum is re-summed from the averaged R@K (not averaged itself)."""
    out = {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0] if k != "rsum"}
    out["rsum"] = sum(v for k, v in out.items() if k[:5] in ("i2t_r", "t2i_r") and k[5:].isdigit())
    return {k: out[k] for k in per_fold[0]}  # keep the key order of one fold


def evaluate_protocol(sims, protocol: str) -> dict:
    """Metrics of `sims` (n_images, n_captions) under f30k_1k, coco_1k (5-fold average) or coco_5k."""
    s = _as_tensor(sims)
    folds, cpi = protocol_folds(protocol, *s.shape)
    per_fold = [recall_at_k(s[fi, fc], cpi) for fi, fc in folds]
    return average_metrics(per_fold)


# ---------------------------------------------------------------------------- dual encoder fast path
def dual_encoder_ranks(img_emb, cap_emb, captions_per_image: int = 5, block: int | None = None):
    """Ranks of sims = img_emb @ cap_emb.T, computed tile by tile; the full matrix is never stored.

    Returns numpy (i2t_ranks, t2i_ranks), identical to `retrieval_ranks` on the matrix assembled from the
    same tiles (one whole-matrix matmul may round differently in the last bit; see docs/evaluation.md).
    """
    img = torch.as_tensor(img_emb)
    cap = torch.as_tensor(cap_emb, device=img.device)
    if not img.is_floating_point():
        img = img.float()
    if img.ndim != 2 or cap.ndim != 2 or img.shape[1] != cap.shape[1] or img.shape[0] == 0:
        raise DataError(
            f"embeddings: expected (n_images, F) and (n_captions, F), got {tuple(img.shape)} and {tuple(cap.shape)}"
        )
    n_img, n_cap = img.shape[0], cap.shape[0]
    _check_cpi(n_img, n_cap, captions_per_image, "embeddings")
    if not (torch.isfinite(img).all() and torch.isfinite(cap).all()):
        raise DataError("embeddings: contain NaN or inf; expected finite values")
    if cap.dtype != img.dtype:
        cap = cap.to(img.dtype)
    block = _default_block(img.device, block)
    side = min(block, n_img)

    def make_tile():
        # one reused flat buffer per worker: no page faults from a fresh allocation per tile
        buf = torch.empty(side * side * captions_per_image, dtype=img.dtype, device=img.device)

        def tile(a, b, c0, c1):
            return torch.mm(img[a:b], cap[c0:c1].T, out=buf[: (b - a) * (c1 - c0)].view(b - a, c1 - c0))
        return tile

    i2t, t2i = _tiled_ranks(make_tile, n_img, captions_per_image, block, img.device, _workers(img.device))
    return i2t.cpu().numpy(), t2i.cpu().numpy()


def evaluate_embeddings(img_emb, cap_emb, protocol: str, block: int | None = None) -> dict:
    """`evaluate_protocol(img_emb @ cap_emb.T, protocol)` without materialising the similarity matrix."""
    img = torch.as_tensor(img_emb)
    cap = torch.as_tensor(cap_emb)
    folds, cpi = protocol_folds(protocol, img.shape[0], cap.shape[0])
    per_fold = [metrics_from_ranks(*dual_encoder_ranks(img[fi], cap[fc], cpi, block)) for fi, fc in folds]
    return average_metrics(per_fold)


# ----------------------------------------------------------------------------------- model level
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on `device` (other values as they are)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, right-padding dim 1 (False for bool, 0 otherwise) where lengths differ."""
    if parts[0].ndim >= 2:
        width = max(p.shape[1] for p in parts)
        parts = [
            p if p.shape[1] == width
            else torch.cat([p, p.new_zeros((p.shape[0], width - p.shape[1], *p.shape[2:]))], dim=1)
            for p in parts
        ]
    return torch.cat(parts, dim=0)


def concat_outputs(outputs: list[dict]) -> dict:
    """Join per-batch embed_* dicts into one dict (tensors concatenated and padded, lists extended)."""
    if not outputs:
        raise DataError("encode: the split yielded no batches; expected at least one image and one caption")
    out = {}
    for key in outputs[0]:
        vals = [o[key] for o in outputs]
        if isinstance(vals[0], torch.Tensor):
            out[key] = _pad_cat(vals)
        else:
            out[key] = [x for v in vals for x in v]
    return out


def encode_batches(model, image_batches: Iterable[dict], caption_batches: Iterable[dict], *, device,
                   autocast_dtype=None) -> tuple[dict, dict, float]:
    """Run embed_images / embed_captions over batches; outputs are kept on the CPU (float32 under autocast)."""
    device = torch.device(device)
    model.eval()
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())

    def run(fn, batches):
        outs = []
        for batch in batches:
            with amp:
                o = fn(to_device(batch, device))
            outs.append({k: _to_cpu(v, autocast_dtype is not None) for k, v in o.items()})
        return concat_outputs(outs)

    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        img = run(model.embed_images, image_batches)
        cap = run(model.embed_captions, caption_batches)
    _sync(device)
    return img, cap, time.perf_counter() - start


def _to_cpu(v, upcast: bool):
    if not isinstance(v, torch.Tensor):
        return v
    v = v.detach()
    if upcast and v.is_floating_point() and v.dtype != torch.float64:
        v = v.float()
    return v.cpu()


def _split_batches(split, batch_size: int, token_cache, max_images):
    """Image and caption batch iterators of a split (kept separate so tests can substitute them)."""
    from itrbench.data.dataset import iter_caption_batches, iter_image_batches

    return (
        iter_image_batches(split, batch_size=batch_size, max_images=max_images),
        iter_caption_batches(split, batch_size=batch_size, token_cache=token_cache, max_images=max_images),
    )


def encode_split(model, split, *, device, batch_size: int = 256, token_cache=None, max_images=None,
                 autocast_dtype=None) -> tuple[dict, dict, float]:
    """Embed every image and caption of a split: (img dict, cap dict, encode_seconds)."""
    image_batches, caption_batches = _split_batches(split, batch_size, token_cache, max_images)
    return encode_batches(model, image_batches, caption_batches, device=device, autocast_dtype=autocast_dtype)


def _rows(d: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in d.items()}


def _n_rows(d: dict, what: str) -> int:
    sizes = {len(v) for v in d.values()}
    if len(sizes) != 1:
        raise DataError(f"{what}: expected every embedding entry to have the same leading size, got {sorted(sizes)}")
    return sizes.pop()


_WARM_IMAGES, _WARM_CAPTIONS = 32, 64  # one scorer block of AsCL's CPU default


def compute_sims(model, img: dict, cap: dict, *, block_images: int = 1000, block_captions: int = 5000,
                 device) -> tuple[np.ndarray, float]:
    """Fill the (n_images, n_captions) float32 similarity matrix from model.score on blocks.

    The time covers scoring only: it starts after a small warm-up block (at most _WARM_IMAGES x _WARM_CAPTIONS
    pairs: it pays one-off costs such as allocator growth and kernel selection, and a full-size warm-up block would
    score the whole 1K matrix twice) and ends after a device synchronisation, before the matrix is copied to host
    memory.
    """
    device = torch.device(device)
    n_img, n_cap = _n_rows(img, "image embeddings"), _n_rows(cap, "caption embeddings")
    model.eval()
    with torch.no_grad():
        img_d = to_device(img, device)  # images are moved once; caption blocks are moved in the outer loop
        out = torch.empty(n_img, n_cap, dtype=torch.float32, device=device)
        warm = model.score(_rows(img_d, slice(0, min(block_images, _WARM_IMAGES, n_img))),
                           to_device(_rows(cap, slice(0, min(block_captions, _WARM_CAPTIONS, n_cap))), device))
        del warm
        _sync(device)
        start = time.perf_counter()
        for c0 in range(0, n_cap, block_captions):
            cs = slice(c0, min(c0 + block_captions, n_cap))
            cap_b = to_device(_rows(cap, cs), device)
            for i0 in range(0, n_img, block_images):
                isl = slice(i0, min(i0 + block_images, n_img))
                s = model.score(_rows(img_d, isl), cap_b)
                if tuple(s.shape) != (isl.stop - isl.start, cs.stop - cs.start):
                    raise DataError(
                        f"model.score: expected a ({isl.stop - isl.start}, {cs.stop - cs.start}) block, "
                        f"got {tuple(s.shape)}"
                    )
                out[isl, cs] = s
        _sync(device)
        seconds = time.perf_counter() - start
    return out.cpu().numpy(), seconds


def evaluate_model(model, split, protocols: Sequence[str], *, device, batch_size: int = 256, token_cache=None,
                   max_images=None, block_images: int = 1000, block_captions: int = 5000, ranks_path=None) -> dict:
    """Encode a split, score every pair, and evaluate each protocol on the one similarity matrix.

    `ranks_path`: also save the whole matrix's 0-based ranks (`i2t` per image, `t2i` per caption, in split order)
    as .npz, for per-query analyses such as recall by caption length.
    """
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"eval.protocols: expected each of {', '.join(PROTOCOLS)}, got {p!r}")
    img, cap, encode_seconds = encode_split(model, split, device=device, batch_size=batch_size,
                                            token_cache=token_cache, max_images=max_images)
    sims, sim_seconds = compute_sims(model, img, cap, block_images=block_images, block_captions=block_captions,
                                     device=device)
    n_img, n_cap = sims.shape
    if ranks_path is not None:
        from itrbench.utils import atomic_path

        i2t, t2i = retrieval_ranks(sims, n_cap // n_img)
        with atomic_path(ranks_path, suffix=".npz") as tmp:
            np.savez(tmp, i2t=i2t, t2i=t2i)
    return {
        "protocols": {p: evaluate_protocol(sims, p) for p in protocols},
        "similarity_seconds": sim_seconds,
        "pairs_per_second": n_img * n_cap / max(sim_seconds, 1e-9),
        "encode_seconds": encode_seconds,
        "n_images": n_img,
        "n_captions": n_cap,
    }
