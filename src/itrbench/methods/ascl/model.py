"""AsCL (Gong, Mai, Huang 2024): hierarchical cross-modal fusion + asymmetry-sensitive contrastive learning.

Regions -> RegionProjection (linear + MLP residual) -> V (K, D); global feature -> X_g -> V_g2 (D); token features
-> linear -> W (L, D). Scores come from `scoring.py` (the fusion module and its batched scorer); the loss
from `losses.py`; generated negatives / positives from `samples.py`. See docs/ascl.md.

Generated caption texts (positives, and the word-shuffled `shuffle` negatives) reach the model in one of two
ways (first match wins), per prefix: `pos_` = positives, `shuf_` = shuffled captions, `pos_shuf_` = shuffled
positives:
  1. the batch carries them: `<prefix>tokens` (B, L', H) float + `<prefix>token_mask` (B, L') bool (frozen text
     mode), or `<prefix>captions` list[str] (fine-tune mode);
  2. otherwise the model makes them from `batch["caption_index"]`: it generates the texts of the training
     captions it trains on once (`samples`) and, in frozen mode, has them encoded once per data set through
     `context.token_cache_factory(tag, texts)`; in fine-tune mode it encodes the texts itself, on the fly.
In frozen mode each distinct text is encoded once: a generated text equal to a training caption reads that
caption's row of the plain cache ("caps"), and a generated cache holds only the remaining distinct texts.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from itrbench.errors import ConfigError
from itrbench.methods.ascl.losses import alpha_keep, ascl_contrastive
from itrbench.losses.triplet import btr_loss, same_image_mask
from itrbench.methods.ascl.samples import generate_negatives, generated_positive_texts, shuffled_texts
from itrbench.methods.ascl.scoring import CrossAttentionFusion, fused_scores, training_scores
from itrbench.models.base import ModelContext, RetrievalModel
from itrbench.models.encoders import RegionProjection, TextSide, l2norm, masked_mean

_BLOCKS = {"cpu": (32, 64), "cuda": (256, 512)}  # (images, captions) per scorer block when the config says null


class AsCL(RetrievalModel):
    method_name = "ascl"

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
        self._set_texts: dict[str, list[str]] = {}
        self._set_cache: dict[str, tuple] = {}
        self._plain_cache: tuple | None = None

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
        from itrbench.methods.ascl.scoring import reference_scores

        if self.fusion is None:
            return self.score(img, cap)
        return reference_scores(self.fusion, img["regions"], img["glob"], cap["words"], cap["mask"])

    # ---------------------------------------------------------------------------------- training
    def _train_scores(self, img: dict, words: Tensor, mask: Tensor) -> Tensor:
        """Differentiable (n_images, n_captions) scores of a training batch."""
        if self.fusion is None:
            return img["pooled"] @ l2norm(masked_mean(words, mask)).T
        return training_scores(self.fusion, img["regions"], img["glob"], words, mask)

    def _negatives(self, words: Tensor, mask: Tensor, shuffled: tuple[Tensor, Tensor] | None = None):
        """(words, mask) of one generated negative per caption; `shuffled` = projected word-shuffled captions."""
        return generate_negatives(words, mask, self.opts["negatives"], self.generator,
                                  noise_std=self.opts["noise_std"], dropout_p=self.opts["dropout_p"], shuffled=shuffled)

    def _objective(self, img: dict, words: Tensor, mask: Tensor, same: Tensor | None,
                   shuffled: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, float]:
        """L_I (or L_II&III for generated positives) of one batch; also the share of generated negatives kept."""
        sims = self._train_scores(img, words, mask)
        gen = None
        if self.opts["negatives"] != "none":
            gen = self._train_scores(img, *self._negatives(words, mask, shuffled))  # gen[n, m] = S(I_n, T⁻_m)
        kept = 1.0 if gen is None else float(alpha_keep(gen, sims.diagonal()).float().mean())
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
            kept = gen.float().masked_fill(~alpha_keep(gen, pos.squeeze(1)), float("-inf"))
            hardest = kept.amax(1, keepdim=True)
            loss = loss + torch.where(torch.isinf(hardest), 0.0, (margin + hardest - pos).clamp_min(0)).mean()
        return loss

    def training_loss(self, batch: dict, epoch: int) -> tuple[Tensor, dict]:
        img = self.embed_images(batch)
        words, mask = self._project_words(*self.text_side(batch))
        same = None
        if self.opts["exclude_same_image"] and "image_index" in batch:
            idx = batch["image_index"]
            same = same_image_mask(idx)
        shuffles = self.opts["negatives"] in ("shuffle", "mixture")
        shuf = self._project_words(*self._generated_tokens(batch, "shuf_", ["shuffle"] * len(words))) if shuffles else None
        loss_i, kept = self._objective(img, words, mask, same, shuf)
        parts = {"l_i": float(loss_i.detach()), "neg_kept": kept}
        loss = loss_i
        if self.opts["positives"] != "none":
            kinds = self._pick_kinds(len(words))
            pos_words, pos_mask = self._project_words(*self._generated_tokens(batch, "pos_", kinds))
            pos_shuf = (self._project_words(*self._generated_tokens(batch, "pos_shuf_", [f"{k}-shuffle" for k in kinds]))
                        if shuffles else None)
            loss_p, kept_p = self._objective(img, pos_words, pos_mask, same, pos_shuf)
            loss = 0.5 * loss_i + 0.5 * loss_p
            parts.update(l_pos=float(loss_p.detach()), pos_neg_kept=kept_p)
        parts["loss"] = float(loss.detach())
        return loss, parts

    # ------------------------------------------------------------------ generated positives / shuffles
    def _texts(self, name: str) -> list[str]:
        """Texts of a generated set, one per training caption the run trains on (context.n_train_captions).

        name: 'long' / 'short' (positives), 'shuffle' (the captions' words shuffled), 'long-shuffle' /
        'short-shuffle' (the positives' words shuffled).
        """
        if name not in self._set_texts:
            split = self._context.train_split
            if split is None:
                key = "ascl.negatives" if name.endswith("shuffle") else "ascl.positives"
                raise ConfigError(f"{key}: no training split to generate the '{name}' texts from; supply batch keys "
                                  "<prefix>tokens/<prefix>token_mask (frozen) or <prefix>captions (finetune)")
            captions = list(split.captions)
            n = int(self._context.n_train_captions or len(captions))
            seed = self.opts["positive_seed"]
            if name == "shuffle":
                texts = shuffled_texts(captions[:n], seed)
            elif name.endswith("-shuffle"):
                texts = shuffled_texts(self._texts(name[: -len("-shuffle")]), seed)
            else:
                texts = generated_positive_texts(split, name, seed)[:n]
            self._set_texts[name] = texts
        return self._set_texts[name]

    def _cache(self, name: str) -> tuple:
        """(plain cache, generated cache of the texts not among the training captions, source rows) of a set.

        rows[i] >= 0: row of the plain caption cache; rows[i] < 0: row -rows[i] - 1 of the generated cache.
        """
        if name not in self._set_cache:
            factory = self._context.token_cache_factory
            if factory is None:
                key = "ascl.negatives" if name.endswith("shuffle") else "ascl.positives"
                raise ConfigError(f"{key}: frozen text mode needs context.token_cache_factory (or batch keys "
                                  f"<prefix>tokens/<prefix>token_mask) to encode the generated '{name}' texts")
            texts = self._texts(name)
            plain_texts = list(self._context.train_split.captions)
            plain_row = {}
            for i, t in enumerate(plain_texts):
                plain_row.setdefault(t, i)
            new: dict[str, int] = {}
            rows = np.empty(len(texts), dtype=np.int64)
            for i, t in enumerate(texts):
                if t in plain_row:
                    rows[i] = plain_row[t]
                else:
                    rows[i] = -new.setdefault(t, len(new)) - 1
            if self._plain_cache is None:  # the run's own training cache: already built, only mapped
                self._plain_cache = factory("caps", plain_texts)
            plain = self._plain_cache
            seed = self.opts["positive_seed"]
            # the set's name, seed (not for `short`, which has none) and how many training captions it covers
            tag = f"ascl-{name}" + ("" if name == "short" else f"-s{seed}") + f"-n{len(texts)}"
            generated = factory(tag, list(new)) if new else None
            self._set_cache[name] = (plain, generated, rows)
        return self._set_cache[name]

    def _pick_kinds(self, n: int) -> list[str]:
        kind = self.opts["positives"]
        if kind != "both":
            return [kind] * n
        # `both`: long or short per caption, drawn anew at every step
        coin = torch.rand(n, generator=self.generator) < 0.5
        return ["long" if c else "short" for c in coin.tolist()]

    def _positive_tokens(self, batch: dict) -> tuple[Tensor, Tensor]:
        return self._generated_tokens(batch, "pos_", self._pick_kinds(len(batch["caption_index"])))

    def _generated_tokens(self, batch: dict, prefix: str, names: list[str]) -> tuple[Tensor, Tensor]:
        """Token features + mask of generated texts: batch keys with `prefix` if present, else set `names[b]`
        of each batch caption (`caption_index`)."""
        finetune = self.text_side.encoder is not None
        if prefix + ("captions" if finetune else "tokens") in batch:
            return self.text_side(batch, prefix=prefix)
        index = batch["caption_index"].cpu().numpy()
        if finetune:
            texts = [self._texts(k)[i] for k, i in zip(names, index)]
            return self.text_side({prefix + "captions": texts}, prefix=prefix)
        device = batch["regions"].device
        rows, lengths = [], []
        for i, k in zip(index, names):
            plain, generated, src = self._cache(k)
            r = int(src[i])
            feats, lens = plain if r >= 0 else generated
            r = r if r >= 0 else -r - 1
            rows.append(np.asarray(feats[r], dtype=np.float32))
            lengths.append(int(lens[r]))
        width = max(lengths)
        tokens = torch.from_numpy(np.stack([row[:width] for row in rows])).to(device)
        mask = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        return tokens, mask

    # ------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {"sample_rng": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        if "sample_rng" in state:  # a checkpoint loaded with map_location=cuda holds it on the GPU
            self.generator.set_state(torch.as_tensor(state["sample_rng"]).cpu())
