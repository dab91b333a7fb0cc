"""AsCL (Gong, Mai, Huang 2024): hierarchical cross-modal fusion + asymmetry-sensitive contrastive learning.

Regions -> RegionProjection (linear + MLP residual) -> V (K, D); global feature -> X_g -> V_g2 (D); token features
-> linear -> W (L, D). Scores come from `itrbench.scoring` (the fusion module and its batched scorer); the loss
from `itrbench.losses.ascl`; generated negatives / positives from `itrbench.samples`. See docs/ascl.md.

Generated positives reach the model in one of two ways (first match wins):
  1. the batch carries them: `pos_tokens` (B, L', H) float + `pos_token_mask` (B, L') bool (frozen text mode),
     or `pos_captions` list[str] (fine-tune mode);
  2. otherwise the model makes them from `batch["caption_index"]`: it generates the positive texts of the
     training split once (`samples.generated_positive_texts`) and, in frozen mode, has them encoded once per
     data set through `context.token_cache_factory(tag, texts)`; in fine-tune mode it encodes the texts itself.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from itrbench.errors import ConfigError
from itrbench.losses.ascl import ascl_contrastive
from itrbench.losses.triplet import btr_loss
from itrbench.models.base import ModelContext, RetrievalModel, register_method
from itrbench.models.encoders import RegionProjection, TextSide, l2norm
from itrbench.samples import generate_negatives, generated_positive_texts
from itrbench.scoring import CrossAttentionFusion, fused_scores, training_scores

_BLOCKS = {"cpu": (32, 64), "cuda": (256, 512)}  # (images, captions) per scorer block when the config says null


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


@register_method("ascl")
class AsCL(RetrievalModel):
    def __init__(self, config: dict, context: ModelContext):
        super().__init__()
        m, a = config["model"], config["ascl"]
        dim = m["embed_dim"]
        if a["fusion"] and dim % a["heads"]:
            raise ConfigError(f"ascl.heads: model.embed_dim {dim} must be divisible by heads {a['heads']}")
        self.opts = dict(a)
        self.regions = RegionProjection(context.image_dim, dim, m["image_mlp"])
        self.text_side = TextSide(context.text_encoder)
        self.words = nn.Linear(context.text_dim, dim)
        self.has_global = context.global_dim is not None
        if a["fusion"]:
            # X_g: the global image feature (ResNet-152 pooled; without one, the mean raw region feature)
            self.global_proj = nn.Linear(context.global_dim or context.image_dim, dim)
            self.fusion = CrossAttentionFusion(dim, a["heads"], a["u1"])
        else:
            self.global_proj = self.fusion = None
        self.generator = torch.Generator().manual_seed(int(config["seed"]) + 7919)
        self._context = context
        self._positive_texts: dict[str, list[str]] = {}
        self._positive_cache: dict[str, tuple] = {}

    # ---------------------------------------------------------------------------------- encoders
    def embed_images(self, batch: dict) -> dict:
        raw = batch["regions"].float()
        regions = self.regions(raw)
        out = {"pooled": l2norm(regions.mean(1))}  # unimodal embedding (Fig. 4), and the `w/o MF` score
        if self.fusion is not None:
            g = batch["global"].float() if self.has_global else raw.mean(1)
            out.update(regions=regions, glob=self.global_proj(g))
        return out

    def _project_words(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        mask = mask.bool()
        return self.words(tokens.float()) * mask.unsqueeze(-1), mask

    def embed_captions(self, batch: dict) -> dict:
        words, mask = self._project_words(*self.text_side(batch))
        return {"words": words, "mask": mask, "pooled": l2norm(masked_mean(words, mask))}

    def _blocks(self, device) -> tuple[int, int]:
        bi, bc = _BLOCKS["cuda" if torch.device(device).type == "cuda" else "cpu"]
        return self.opts["score_block_images"] or bi, self.opts["score_block_captions"] or bc

    def score(self, img: dict, cap: dict) -> Tensor:
        if self.fusion is None:
            return img["pooled"].float() @ cap["pooled"].float().T
        bi, bc = self._blocks(img["regions"].device)
        return fused_scores(self.fusion, img["regions"], img["glob"], cap["words"], cap["mask"],
                            block_images=bi, block_captions=bc, compile=self.opts["compile"])

    def eval_settings(self) -> dict:
        if self.fusion is None:
            return {}
        bi, bc = self._blocks(next(self.parameters()).device)
        return {"scorer": "cross_attention", "compile": self.opts["compile"], "block_images": bi,
                "block_captions": bc}

    def reference_score(self, img: dict, cap: dict) -> Tensor:
        """The per-caption loop (tests and bench/xattn.py); same scores as `score`."""
        from itrbench.scoring import reference_scores

        if self.fusion is None:
            return self.score(img, cap)
        return reference_scores(self.fusion, img["regions"], img["glob"], cap["words"], cap["mask"])

    # ---------------------------------------------------------------------------------- training
    def _train_scores(self, img: dict, words: Tensor, mask: Tensor) -> Tensor:
        """Differentiable (n_images, n_captions) scores of a training batch."""
        if self.fusion is None:
            return img["pooled"] @ l2norm(masked_mean(words, mask)).T
        return training_scores(self.fusion, img["regions"], img["glob"], words, mask)

    def _negatives(self, words: Tensor, mask: Tensor) -> Tensor:
        return generate_negatives(words, mask, self.opts["negatives"], self.generator,
                                  noise_std=self.opts["noise_std"], dropout_p=self.opts["dropout_p"])

    def _objective(self, img: dict, words: Tensor, mask: Tensor, same: Tensor | None) -> tuple[Tensor, float]:
        """L_I (or L_II&III for generated positives) of one batch; also the share of generated negatives kept."""
        sims = self._train_scores(img, words, mask)
        gen = None
        if self.opts["negatives"] != "none":
            gen = self._train_scores(img, self._negatives(words, mask), mask)  # gen[n, m] = S(I_n, T⁻_m)
        kept = 1.0 if gen is None else float((gen.detach() <= sims.detach().diagonal()[:, None]).float().mean())
        if self.opts["loss"] == "contrastive":
            return ascl_contrastive(sims, gen, self.opts["tau"], same), kept
        return self._triplet(sims, gen, same), kept

    def _triplet(self, sims: Tensor, gen: Tensor | None, same: Tensor | None) -> Tensor:
        """`w triplet`: VSE++ hardest-negative hinge on the same scores; the hardest kept (α = 1) generated
        negative of each image is one more hinge term for that image."""
        n = sims.shape[0]
        same = torch.eye(n, dtype=torch.bool, device=sims.device) if same is None else same
        margin = self.opts["triplet_margin"]
        loss = btr_loss(sims, same, margin, reduction="mean")
        if gen is not None:
            pos = sims.float().diagonal()[:, None]
            kept = gen.float().masked_fill(gen.detach() > pos.detach(), float("-inf"))
            hardest = kept.amax(1, keepdim=True)
            loss = loss + torch.where(torch.isinf(hardest), 0.0, (margin + hardest - pos).clamp_min(0)).mean()
        return loss

    def training_loss(self, batch: dict, epoch: int) -> tuple[Tensor, dict]:
        img = self.embed_images(batch)
        words, mask = self._project_words(*self.text_side(batch))
        same = None
        if self.opts["exclude_same_image"] and "image_index" in batch:
            idx = batch["image_index"]
            same = idx[:, None] == idx[None, :]
        loss_i, kept = self._objective(img, words, mask, same)
        parts = {"l_i": float(loss_i.detach()), "neg_kept": kept}
        loss = loss_i
        if self.opts["positives"] != "none":
            pos_words, pos_mask = self._project_words(*self._positive_tokens(batch))
            loss_p, kept_p = self._objective(img, pos_words, pos_mask, same)
            loss = 0.5 * loss_i + 0.5 * loss_p
            parts.update(l_pos=float(loss_p.detach()), pos_neg_kept=kept_p)
        parts["loss"] = float(loss.detach())
        return loss, parts

    # -------------------------------------------------------------------------- generated positives
    def _texts(self, kind: str) -> list[str]:
        if kind not in self._positive_texts:
            split = self._context.train_split
            if split is None:
                raise ConfigError("ascl.positives: no training split to generate positives from; "
                                  "supply batch keys pos_tokens/pos_token_mask (frozen) or pos_captions (finetune)")
            self._positive_texts[kind] = generated_positive_texts(split, kind, self.opts["positive_seed"])
        return self._positive_texts[kind]

    def _cache(self, kind: str) -> tuple:
        if kind not in self._positive_cache:
            factory = self._context.token_cache_factory
            if factory is None:
                raise ConfigError("ascl.positives: frozen text mode needs context.token_cache_factory (or batch "
                                  "keys pos_tokens/pos_token_mask) to encode the generated positives")
            tag = f"ascl-{kind}-s{self.opts['positive_seed']}" if kind == "long" else f"ascl-{kind}"
            self._positive_cache[kind] = factory(tag, self._texts(kind))
        return self._positive_cache[kind]

    def _pick_kinds(self, n: int) -> list[str]:
        kind = self.opts["positives"]
        if kind != "both":
            return [kind] * n
        # `both`: long or short per caption, drawn anew at every step
        coin = torch.rand(n, generator=self.generator) < 0.5
        return ["long" if c else "short" for c in coin.tolist()]

    def _positive_tokens(self, batch: dict) -> tuple[Tensor, Tensor]:
        if "pos_tokens" in batch or "pos_captions" in batch:
            return self.text_side(batch, prefix="pos_")
        index = batch["caption_index"].cpu().numpy()
        kinds = self._pick_kinds(len(index))
        if self.text_side.encoder is not None:
            texts = [self._texts(k)[i] for k, i in zip(kinds, index)]
            return self.text_side({"pos_captions": texts}, prefix="pos_")
        device = batch["regions"].device
        rows, lengths = [], []
        for i, k in zip(index, kinds):
            feats, lens = self._cache(k)
            rows.append(np.asarray(feats[i], dtype=np.float32))
            lengths.append(int(lens[i]))
        width = max(lengths)
        tokens = torch.from_numpy(np.stack([r[:width] for r in rows])).to(device)
        mask = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        return tokens, mask

    # ------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {"sample_rng": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        if "sample_rng" in state:  # a checkpoint loaded with map_location=cuda holds it on the GPU
            self.generator.set_state(torch.as_tensor(state["sample_rng"]).cpu())
