"""Cross-attention fusion scoring for AsCL (SPEC §4.3): the fusion module, a per-caption reference loop and a
blocked, batched pairwise scorer that computes the same scores.

Fusion of one pair (regions V (K, D), global V_g2 (D), words W (L, D) of which the first L_real are real):
  I2T  W* = MHA_i2t(query V, key/value W)  (K, D)      T2I  V* = MHA_t2i(query W, key/value V)  (L, D)
  S_local  = ½ mean_k cos(v_k, w*_k) + ½ mean_j cos(w_j, v*_j)         (real words only)
  W_g = X_w mean_k W*,  V_g1 = X_v mean_j V*,  gate = σ(A [V_g1; V_g2] + b),  V_g = gate V_g1 + (1-gate) V_g2
  S = u1 S_local + (1 - u1) cos(V_g, W_g)

Why the batched scorer is fast (docs/ascl.md has the derivation). Every projection is linear, so it is applied
once per *item*, never per pair:
  * attention logits are dot products of per-item projected queries and keys;
  * w*_k = Σ_h Σ_j a^h_kj U^h_j with U^h_j = W_o^h (W_v^h w_j + b_v^h) + b_o / H (the output projection folded
    into per-word, per-head vectors; the bias split over heads works because each head's weights sum to one), so
    v_k·w*_k = Σ a^h_kj (v_k W_o^h)·(W_v^h w_j + b_v^h) + v_k·b_o needs only a d-dim dot per (k, j, h), and
    |w*_k|² = a_kᵀ G a_k with the per-caption Gram matrix G = U Uᵀ (HL × HL);
  * mean_k W* = Σ c_j U_j with c_j = mean_k a_kj, so W_g = Σ c_j (X_w U_j): per pair a (HL)-weighted sum of
    per-caption vectors; the T2I side and the gate's linear layer fold the same way.
Per pair only the four attention products (two large matmuls per block), two softmaxes, two small Gram
contractions and a few weighted sums remain. Captions are scored in length-sorted blocks trimmed to their longest
caption; on CPU the caption blocks are spread over threads.
"""
from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itrbench.models.encoders import caption_lengths

EPS = 1e-8  # as F.cosine_similarity: each norm is clamped to at least EPS


class CrossAttentionFusion(nn.Module):
    """The learnable part of AsCL's hierarchical fusion (local multi-head cross attention + gated global fusion)."""

    def __init__(self, dim: int, heads: int, u1: float = 0.6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"fusion: embed dim {dim} must be divisible by heads {heads}")
        self.dim, self.heads, self.u1 = dim, heads, float(u1)
        self.i2t = nn.MultiheadAttention(dim, heads, batch_first=True)  # queries regions, keys/values words
        self.t2i = nn.MultiheadAttention(dim, heads, batch_first=True)  # queries words, keys/values regions
        self.x_w = nn.Linear(dim, dim, bias=False)
        self.x_v = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(2 * dim, dim)


# ------------------------------------------------------------------------------------------- reference
def reference_scores(fusion: CrossAttentionFusion, regions: Tensor, glob: Tensor, words: Tensor,
                     mask: Tensor) -> Tensor:
    """(n_img, n_cap) scores, one caption at a time against every image (as SCAN's `xattn_score`).

    Straightforward on purpose: the caption's real tokens are repeated for every image and pushed through
    torch's own nn.MultiheadAttention, so it checks the batched scorer's algebra, folding and masking.
    """
    n_img, n_cap = regions.shape[0], words.shape[0]
    out = regions.new_empty(n_img, n_cap)
    for c in range(n_cap):
        w = words[c][mask[c]].unsqueeze(0).expand(n_img, -1, -1)
        w_star = fusion.i2t(regions, w, w, need_weights=False)[0]
        v_star = fusion.t2i(w, regions, regions, need_weights=False)[0]
        local = 0.5 * (F.cosine_similarity(regions, w_star, dim=-1, eps=EPS).mean(1)
                       + F.cosine_similarity(w, v_star, dim=-1, eps=EPS).mean(1))
        w_g = fusion.x_w(w_star.mean(1))
        v_g1 = fusion.x_v(v_star.mean(1))
        gate = torch.sigmoid(fusion.gate(torch.cat([v_g1, glob], dim=-1)))
        v_g = gate * v_g1 + (1 - gate) * glob
        out[:, c] = fusion.u1 * local + (1 - fusion.u1) * F.cosine_similarity(v_g, w_g, dim=-1, eps=EPS)
    return out


# ------------------------------------------------------------------------------- per-item precomputation
def _mha_parts(mha: nn.MultiheadAttention, heads: int):
    d_model = mha.embed_dim
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    wo = mha.out_proj.weight.view(d_model, heads, d_model // heads)  # wo[:, h] = W_o^h, (D, d)
    return wq, wk, wv, bq, bk, bv, wo, mha.out_proj.bias


def _gram(u: Tensor) -> Tensor:
    """U Uᵀ per item, in at least fp32: squared norms come out of it, so bf16 rounding is not good enough."""
    with torch.autocast(u.device.type, enabled=False):
        u = u.float() if u.dtype in (torch.bfloat16, torch.float16) else u
        return u @ u.transpose(1, 2)


def prepare_images(fusion: CrossAttentionFusion, regions: Tensor, glob: Tensor) -> dict:
    """Everything per image the pairwise stage needs. regions (n, K, D) projected, glob (n, D) = V_g2."""
    n, k, dim = regions.shape
    h = fusion.heads
    d = dim // h
    wq1, _, _, bq1, _, _, wo1, bo1 = _mha_parts(fusion.i2t, h)
    _, wk2, wv2, _, bk2, bv2, wo2, bo2 = _mha_parts(fusion.t2i, h)
    # image sides of the four attention products: I2T queries and value-dot vectors (v_k W_o^h), T2I keys and values
    q = F.linear(regions, wq1, bq1).view(n, k, h, d) / math.sqrt(d)
    r = torch.einsum("nkD,Dhe->nkhe", regions, wo1)
    key = F.linear(regions, wk2, bk2).view(n, k, h, d)
    val = F.linear(regions, wv2, bv2).view(n, k, h, d)
    # T2I output projection folded per region and head: U'^h_k (n, H, K, D), for the Gram matrix
    u = (torch.einsum("nkhe,Dhe->nhkD", val, wo2) + bo2 / h).reshape(n, h * k, dim)
    # global side: X_v U' and A1 X_v U' (A1, A2 = the gate's halves), with X_v, A1 folded into W_o first so the
    # cost per image is K D² rather than H K D²
    a1, a2 = fusion.gate.weight[:, :dim], fusion.gate.weight[:, dim:]
    fold = torch.cat([fusion.x_v.weight, a1 @ fusion.x_v.weight])             # (2D, D)
    proj = torch.einsum("nkhe,Fhe->nhkF", val, (fold @ wo2.reshape(dim, dim)).view(2 * dim, h, d)) + fold @ bo2 / h
    return {
        "i2t": torch.stack([q, r]).permute(0, 3, 4, 1, 2).reshape(2, h, d, n * k),   # (2, H, d, n*K)
        "t2i": torch.stack([key, val]).permute(0, 3, 1, 2, 4).contiguous(),          # (2, H, n, K, d)
        "vb": regions @ bo1,                              # v_k · b_o (I2T)
        "vnorm": regions.norm(dim=-1).clamp_min(EPS),
        "gram": _gram(u),                                 # (n, HK, HK)
        "proj": proj.reshape(n, h * k, 2 * dim),          # (n, HK, 2D): X_v U' and A1 X_v U'
        "glob": glob,
        "gate_bias": glob @ a2.T + fusion.gate.bias,      # A2 V_g2 + b
    }


def prepare_captions(fusion: CrossAttentionFusion, words: Tensor, mask: Tensor) -> dict:
    """Everything per caption the pairwise stage needs. words (n, L, D) projected, mask (n, L) True on real tokens."""
    n, length, dim = words.shape
    h = fusion.heads
    d = dim // h
    _, wk1, wv1, _, bk1, bv1, wo1, bo1 = _mha_parts(fusion.i2t, h)
    wq2, _, _, bq2, _, _, wo2, bo2 = _mha_parts(fusion.t2i, h)
    key = F.linear(words, wk1, bk1).view(n, length, h, d)
    val = F.linear(words, wv1, bv1).view(n, length, h, d)
    q = F.linear(words, wq2, bq2).view(n, length, h, d) / math.sqrt(d)
    s = torch.einsum("nlD,Dhe->nlhe", words, wo2)
    u = torch.einsum("nlhe,Dhe->nhlD", val, wo1) + bo1 / h            # (n, H, L, D)
    xw = fusion.x_w.weight
    proj = torch.einsum("nlhe,Fhe->nhlF", val, (xw @ wo1.reshape(dim, dim)).view(dim, h, d)) + xw @ bo1 / h
    return {
        "i2t": torch.stack([key, val], dim=1).permute(0, 1, 3, 2, 4).contiguous(),  # (n, 2, H, L, d)
        "t2i": torch.stack([q, s], dim=1).permute(0, 1, 3, 4, 2).contiguous(),      # (n, 2, H, d, L)
        "wb": words @ bo2,                                   # w_j · b_o (T2I)
        "wnorm": words.norm(dim=-1).clamp_min(EPS),
        "gram": _gram(u.reshape(n, h * length, dim)).view(n, h, length, h, length),
        "proj": proj,                                        # (n, H, L, D): X_w U
        "mask": mask,
    }


def _caption_block(cap: dict, idx: Tensor, length: int) -> dict:
    """Rows `idx` of the prepared captions, trimmed to the first `length` token positions, laid out for the
    two products: I2T (H, n*L, d) caption rows, T2I (H, d, L*n) caption columns (word-major)."""
    def rows(x):
        return x.index_select(0, idx)

    n = len(idx)
    i2t = rows(cap["i2t"])[:, :, :, :length]                   # (n, 2, H, L, d)
    t2i = rows(cap["t2i"])[..., :length]                       # (n, 2, H, d, L)
    h, d = i2t.shape[2], i2t.shape[4]
    gram = rows(cap["gram"])[:, :, :length, :, :length]
    proj = rows(cap["proj"])[:, :, :length]
    mask = rows(cap["mask"])[:, :length]                        # (n, L)
    dtype = i2t.dtype
    weight = mask.to(dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(dtype)
    return {
        "i2t": i2t.permute(1, 2, 0, 3, 4).reshape(2, h, n * length, d),
        "t2i": t2i.permute(1, 2, 3, 4, 0).reshape(2, h, d, length * n),
        "length": length,
        "wb": rows(cap["wb"])[:, :length].T,                   # (L, n)
        "wnorm": rows(cap["wnorm"])[:, :length].T,             # (L, n)
        "gram": gram.reshape(n, h * length, h * length),
        "proj": proj.reshape(n, h * length, proj.shape[-1]),
        "mask_bias": torch.zeros((n, length, 1, 1), dtype=dtype, device=mask.device).masked_fill(
            ~mask[:, :, None, None], float("-inf")),
        "weight": weight.T.contiguous(),                        # (L, n): mask / length
    }


def _image_block(img: dict, sl: slice) -> dict:
    k = img["vnorm"].shape[1]
    out = {key: v[sl] for key, v in img.items() if key not in ("i2t", "t2i")}
    out["i2t"] = img["i2t"][..., sl.start * k: sl.stop * k]
    out["t2i"] = img["t2i"][:, :, sl]
    return out


# ------------------------------------------------------------------------------------------ pairwise
def _block_shape(img: dict, cap: dict) -> tuple[int, int, int, int, int, int]:
    """(caption length L, heads H, head width d, images ni, regions K, captions nc) of one block pair."""
    length = cap["length"]
    h, d, nk = img["i2t"].shape[1], img["i2t"].shape[2], img["i2t"].shape[3]
    ni = img["vnorm"].shape[0]
    return length, h, d, ni, nk // ni, cap["i2t"].shape[2] // length


def block_scores(img: dict, cap: dict, u1: float, autocast: bool = False) -> Tensor:
    """(n_img, n_cap) scores of one image block against one caption block (outputs of the two `_..._block`).

    The two directions use the two orientations of the product so that each one's softmax, Gram contraction and
    reductions run over a non-innermost dimension of a contiguous tensor (fast in torch) and need no copies:
    I2T tensors are (H, caption, word, image, region), T2I tensors (H, image, region, word, caption).
    """
    length, h, d, ni, k, nc = _block_shape(img, cap)
    hl, hk = h * length, h * k
    device_type = img["vnorm"].device.type
    # the only per-pair products with the model width in them: 2 x 2 x H matmuls
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        prod1 = torch.matmul(cap["i2t"], img["i2t"])        # (2, H, nc*L, ni*K): I2T logits, value dots
        prod2 = torch.matmul(img["t2i"].reshape(2, h, ni * k, d), cap["t2i"])  # (2, H, ni*K, L*nc): T2I
    with torch.autocast(device_type, enabled=False):
        # bf16 products (CUDA autocast) are widened; the rest runs in the inputs' precision (fp32 normally)
        work = torch.float32 if prod1.dtype in (torch.bfloat16, torch.float16) else prod1.dtype
        logits1, vd1 = prod1.to(work).view(2, h, nc, length, ni, k).unbind(0)
        logits2, vd2 = prod2.to(work).view(2, h, ni, k, length, nc).unbind(0)
        img = {key: v.to(work) for key, v in img.items() if key not in ("i2t", "t2i")}
        cap = {key: (v.to(work) if torch.is_tensor(v) and v.is_floating_point() else v) for key, v in cap.items()}

        # I2T: each region attends over the caption's real words (softmax over the word dim)
        a = torch.softmax(logits1 + cap["mask_bias"], dim=2)                         # (H, nc, L, ni, K)
        num1 = (a * vd1).sum(dim=(0, 2)) + img["vb"]                                 # (nc, ni, K)
        a_c = a.transpose(0, 1).reshape(nc, hl, ni * k)                              # a view when H == 1
        sq1 = ((cap["gram"] @ a_c) * a_c).sum(1).view(nc, ni, k)                     # |w*|² = aᵀ G a
        cos1 = num1 / (img["vnorm"] * sq1.clamp_min(EPS * EPS).sqrt())
        s_i2t = cos1.mean(-1).T                                                       # (ni, nc)
        c1 = a_c.view(nc, hl, ni, k).mean(-1)                                         # (nc, HL, ni): mean over regions
        w_g = (c1.transpose(1, 2) @ cap["proj"]).transpose(0, 1)                     # (ni, nc, D)

        # T2I: each word attends over the image's regions; padding words are computed but weigh nothing
        b = torch.softmax(logits2, dim=2)                                             # (H, ni, K, L, nc)
        num2 = (b * vd2).sum(dim=(0, 2)) + cap["wb"]                                 # (ni, L, nc)
        b_i = b.transpose(0, 1).reshape(ni, hk, length * nc)                         # a view when H == 1
        sq2 = ((img["gram"] @ b_i) * b_i).sum(1).view(ni, length, nc)
        cos2 = num2 / (cap["wnorm"] * sq2.clamp_min(EPS * EPS).sqrt())
        weight = cap["weight"]                                                        # (L, nc)
        s_t2i = (cos2 * weight).sum(1)                                               # (ni, nc)
        c2 = (b_i.view(ni, hk, length, nc) * weight).sum(2)                          # (ni, HK, nc)
        gv = c2.transpose(1, 2) @ img["proj"]                                         # (ni, nc, 2D)

        # gated global fusion
        dim = gv.shape[-1] // 2
        v_g1, pre = gv[..., :dim], gv[..., dim:] + img["gate_bias"][:, None, :]
        glob = img["glob"][:, None, :]
        v_g = glob + torch.sigmoid(pre) * (v_g1 - glob)
        s_g = (v_g * w_g).sum(-1) / (v_g.norm(dim=-1).clamp_min(EPS) * w_g.norm(dim=-1).clamp_min(EPS))
        return u1 * 0.5 * (s_i2t + s_t2i) + (1 - u1) * s_g


def eval_block_scores(img: dict, cap: dict, u1: float) -> Tensor:
    """`block_scores` for evaluation (no autograd, float32/64 on CPU): the same algebra with the two softmaxes
    written out and every large (block-sized) intermediate updated in place. torch.softmax over a non-innermost
    dimension runs a scalar loop, and each fresh block-sized tensor is one more pass through memory; at the toy
    width (D = 32) those passes, not the products, were most of the time (docs/pipeline.md, Budgets)."""
    length, h, d, ni, k, nc = _block_shape(img, cap)
    hl, hk = h * length, h * k
    prod1 = torch.matmul(cap["i2t"], img["i2t"])                                 # (2, H, nc*L, ni*K)
    prod2 = torch.matmul(img["t2i"].reshape(2, h, ni * k, d), cap["t2i"])        # (2, H, ni*K, L*nc)
    logits1, vd1 = prod1.view(2, h, nc, length, ni, k).unbind(0)
    logits2, vd2 = prod2.view(2, h, ni, k, length, nc).unbind(0)

    # I2T: softmax over the caption's real words (dim 2); a is the logits' own storage
    a = logits1.add_(cap["mask_bias"])
    a.sub_(a.amax(2, keepdim=True)).exp_()
    a.div_(a.sum(2, keepdim=True))
    num1 = vd1.mul_(a).sum(dim=(0, 2)).add_(img["vb"])                           # (nc, ni, K)
    a_c = a.transpose(0, 1).reshape(nc, hl, ni * k)
    sq1 = torch.bmm(cap["gram"], a_c).mul_(a_c).sum(1).view(nc, ni, k)
    cos1 = num1.div_(sq1.clamp_min_(EPS * EPS).sqrt_().mul_(img["vnorm"]))
    s_i2t = cos1.mean(-1).T                                                       # (ni, nc)
    c1 = a_c.view(nc, hl, ni, k).mean(-1)                                         # (nc, HL, ni)
    w_g = torch.bmm(c1.transpose(1, 2), cap["proj"]).transpose(0, 1)             # (ni, nc, D)

    # T2I: softmax over the image's regions (dim 2)
    b = logits2
    b.sub_(b.amax(2, keepdim=True)).exp_()
    b.div_(b.sum(2, keepdim=True))
    num2 = vd2.mul_(b).sum(dim=(0, 2)).add_(cap["wb"])                           # (ni, L, nc)
    b_i = b.transpose(0, 1).reshape(ni, hk, length * nc)
    sq2 = torch.bmm(img["gram"], b_i).mul_(b_i).sum(1).view(ni, length, nc)
    cos2 = num2.div_(sq2.clamp_min_(EPS * EPS).sqrt_().mul_(cap["wnorm"]))
    weight = cap["weight"]                                                        # (L, nc)
    s_t2i = cos2.mul_(weight).sum(1)                                             # (ni, nc)
    c2 = b_i.view(ni, hk, length, nc).mul_(weight).sum(2)                        # (ni, HK, nc)
    gv = torch.bmm(c2.transpose(1, 2), img["proj"])                               # (ni, nc, 2D)

    dim = gv.shape[-1] // 2
    v_g1, pre = gv[..., :dim], gv[..., dim:].add_(img["gate_bias"][:, None, :])
    glob = img["glob"][:, None, :]
    v_g = v_g1.sub_(glob).mul_(pre.sigmoid_()).add_(glob)
    s_g = (v_g * w_g).sum(-1).div_(v_g.norm(dim=-1).clamp_min_(EPS).mul_(w_g.norm(dim=-1).clamp_min_(EPS)))
    return s_g.mul_(1 - u1).add_(s_i2t.add_(s_t2i), alpha=u1 * 0.5)


# ------------------------------------------------------------------------------- compiled eval path (CPU)
# torch.compile (inductor) fuses block_scores' ~30 elementwise/reduction passes into a few C++ loops: 1.7-3.5x per
# block on CPU at toy widths, more for long captions (measured in bench/xattn.py --compile). Kernels are compiled for
# static shapes only (inductor's dynamic-shape kernels measured no faster than eager), so every block is padded to
# a fixed (block_images, block_captions) and its caption length rounded up to a multiple of _LENGTH_STEP: a handful
# of shapes per evaluation. A cold compile costs ~7 s per shape (~20 s for the first; inductor's on-disk cache makes
# later processes ~0.5 s per shape), which only pays off on large evaluations, hence _COMPILE_MIN_PAIRS.
_LENGTH_STEP = 4
_COMPILE_MIN_PAIRS = 25_000_000  # toy-coco 5K (125 M pairs) compiles; toy-f30k 1K (5 M) stays eager
_compiled = {"fn": None, "broken": False}
_compile_lock = threading.Lock()


def _compile_wanted(compile: bool | None, device: torch.device, n_pairs: int) -> bool:
    """`compile` argument (run config `ascl.compile`), None = by size. CPU only: CUDA runs bf16 autocast eagerly."""
    if device.type != "cpu" or _compiled["broken"]:
        return False
    if compile is None:
        compile = n_pairs >= _COMPILE_MIN_PAIRS
    return bool(compile)


def _compiled_block_scores(img: dict, cap: dict, u1: float) -> Tensor:
    """block_scores through torch.compile; on any failure (no C++ compiler, unsupported platform, ...) warns once
    and falls back to eager for the rest of the process."""
    if not _compiled["broken"]:
        try:
            with _compile_lock:
                if _compiled["fn"] is None:
                    import torch._dynamo
                    # one compiled graph per (length bucket, u1): more than dynamo's default recompile limit of 8
                    # would silently drop to eager
                    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                    # cpp_wrapper: the whole graph is one C++ call that releases the GIL, so the worker threads
                    # run in parallel (the default Python wrapper holds the GIL in every fused kernel)
                    _compiled["fn"] = torch.compile(block_scores, dynamic=False, options={"cpp_wrapper": True})
            return _compiled["fn"](img, cap, u1)
        except Exception as err:  # noqa: BLE001 - any compiler problem means "use eager"
            _compiled["broken"] = True
            warnings.warn(f"fused_scores: torch.compile failed, scoring eagerly ({type(err).__name__}: {err})",
                          RuntimeWarning, stacklevel=2)
    return block_scores(img, cap, u1)


def _pad_dim(x: Tensor, dim: int, size: int, value=0) -> Tensor:
    if x.shape[dim] >= size:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, size - x.shape[dim]]
    return F.pad(x, pad, value=value)


def fused_scores(fusion: CrossAttentionFusion, regions: Tensor, glob: Tensor, words: Tensor, mask: Tensor, *,
                 block_images: int = 32, block_captions: int = 64, autocast: bool | None = None,
                 workers: int | None = None, compile: bool | None = None) -> Tensor:
    """(n_img, n_cap) fusion scores, equal to `reference_scores` up to float rounding.

    Memory is bounded by block_images x block_captions x K x L x H (times a few tensors, per worker); captions are
    processed in length-sorted blocks, each trimmed to its longest caption. `autocast` None = bf16 matmuls on
    CUDA, fp32 on CPU. On CPU, `workers` (None = torch's thread count) threads score whole caption blocks with one
    intra-op thread each: the per-block tensors are too small for torch's own threading to pay for its barriers.
    `compile` (CPU only): True/False = torch.compile the block scorer or not; None = compile for evaluations of at
    least _COMPILE_MIN_PAIRS pairs. Falls back to eager if compiling fails.
    """
    if mask.dtype != torch.bool:
        mask = mask.bool()
    if not bool(mask.any(1).all()):
        raise ValueError("fused_scores: every caption needs at least one real token (mask row all False)")
    cuda = regions.device.type == "cuda"
    if autocast is None:
        autocast = cuda
    n_img, n_cap = regions.shape[0], words.shape[0]
    lengths = caption_lengths(mask)
    lengths_cpu = lengths.cpu()
    grad = torch.is_grad_enabled()
    # compiled kernels are for evaluation only (the autograd path is training_scores')
    compiled = not grad and _compile_wanted(compile, regions.device, n_img * n_cap)
    # the in-place evaluation path: no autograd, and no bf16 products to widen
    in_place = not grad and not autocast
    if compiled:
        # static shapes for the compiled kernels: zero images fill the last image block (their rows are dropped),
        # padding words (mask False, so they weigh nothing) reach the largest length bucket, and short caption
        # blocks repeat their last caption (columns written twice with the same value)
        n_pad = -n_img % block_images
        regions, glob = _pad_dim(regions, 0, n_img + n_pad), _pad_dim(glob, 0, n_img + n_pad)
        width = -(-int(lengths_cpu.max()) // _LENGTH_STEP) * _LENGTH_STEP
        words, mask = _pad_dim(words, 1, width), _pad_dim(mask, 1, width, value=False)
    img = prepare_images(fusion, regions, glob)
    cap = prepare_captions(fusion, words, mask)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(regions.shape[0], n_cap, dtype=torch.promote_types(regions.dtype, torch.float32),
                      device=regions.device)
    n_rows = regions.shape[0]
    image_blocks = [slice(i0, min(i0 + block_images, n_rows)) for i0 in range(0, n_rows, block_images)]

    def block_of(c0: int) -> tuple[Tensor, int]:
        idx = order[c0:c0 + block_captions]
        length = int(lengths_cpu[idx.cpu()].max())
        if compiled:
            idx = torch.cat([idx, idx[-1:].expand(block_captions - len(idx))])
            length = -(-length // _LENGTH_STEP) * _LENGTH_STEP
        return idx, length

    def caption_block(c0: int) -> tuple[Tensor, Tensor]:
        # grad mode is thread-local: worker threads take the caller's (a different one would also make dynamo's
        # guards fail and recompile)
        with torch.set_grad_enabled(grad):
            idx, length = block_of(c0)
            cb = _caption_block(cap, idx, length)
            cols = out.new_empty(n_rows, len(idx))
            for sl in image_blocks:
                ib = _image_block(img, sl)
                if compiled:
                    cols[sl] = _compiled_block_scores(ib, cb, fusion.u1)
                elif in_place:
                    cols[sl] = eval_block_scores(ib, cb, fusion.u1)
                else:
                    cols[sl] = block_scores(ib, cb, fusion.u1, autocast)
            return idx, cols

    starts = range(0, n_cap, block_captions)
    workers = 1 if cuda else min(workers or torch.get_num_threads(), len(starts))
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        if compiled:
            # compile every length bucket here, once, before any worker thread needs it (the workers' intra-op
            # thread count of 1 is also what the kernels are generated for: OpenMP kernels on top of the worker
            # threads measured 4x slower on a busy 2-core machine)
            warm = {}
            for c0 in starts:
                warm.setdefault(block_of(c0)[1], c0)
            for length, c0 in sorted(warm.items()):
                _compiled_block_scores(_image_block(img, image_blocks[0]), _caption_block(cap, block_of(c0)[0], length),
                                       fusion.u1)
        if workers <= 1:
            for c0 in starts:
                idx, cols = caption_block(c0)
                out[:, idx] = cols
        else:
            with ThreadPoolExecutor(workers) as pool:
                for idx, cols in pool.map(caption_block, starts):
                    out[:, idx] = cols
    finally:
        torch.set_num_threads(threads)
    return out[:n_img]


def training_scores(fusion: CrossAttentionFusion, regions: Tensor, glob: Tensor, words: Tensor, mask: Tensor,
                    autocast: bool | None = None) -> Tensor:
    """Differentiable (n_img, n_cap) scores in one block (training batches are small)."""
    if autocast is None:
        autocast = torch.is_autocast_enabled(regions.device.type) if regions.device.type == "cuda" else False
    img = prepare_images(fusion, regions, glob)
    cap = prepare_captions(fusion, words, mask.bool())
    lengths = caption_lengths(mask.bool())
    idx = torch.arange(words.shape[0], device=words.device)
    return block_scores(img, _caption_block(cap, idx, int(lengths.max())), fusion.u1, autocast)


# --------------------------------------------------------------------------------------- accounting
def useful_flops(n_img: int, lengths, n_regions: int, dim: int, heads: int) -> float:
    """FLOPs the batched scorer cannot avoid for n_img images x the given caption lengths (real tokens).

    Per pair: the four attention products (4 K L D multiply-adds), the two Gram contractions (K (HL)² and
    L (HK)²) and the global weighted sums (HL D + 2 HK D); multiply-add = 2 FLOPs. Softmax, padding and the
    per-item projections are not counted.
    """
    k, h = n_regions, heads
    total = 0.0
    for length in lengths:
        total += (4 * k * length * dim + k * (h * length) ** 2 + length * (h * k) ** 2
                  + h * length * dim + 2 * h * k * dim)
    return 2.0 * n_img * total
