"""SCAN (Lee et al., ECCV 2018): stacked cross attention between region and word features, hardest-negative
triplet loss. See README.md in this folder for the equations and where each one lives.

A `direction: t2i` or `i2t` run trains one single model. `direction: ensemble` holds both single models (separate
parameters, each with its own λ settings and its own loss) and scores a pair by the mean of their similarities, as
the paper's reported rows do. Each single model is built from its own seed (the run seed and its direction), so an
ensemble run's t2i and i2t parts start equal to the single runs' models and, fed the same batches, get the same
gradients; only the trainer's gradient-norm clip (train.grad_clip) sees the two parts' gradients together.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from itrbench.losses.triplet import btr_loss, same_image_mask
from itrbench.methods.scan.attention import DIRECTIONS, blocked_scores, block_scores, gram, reference_scores
from itrbench.models.base import ModelContext, RetrievalModel
from itrbench.models.encoders import TextSide, l2norm

_BLOCKS = {"cpu": (32, 128), "cuda": (128, 256)}  # (images, captions) per scorer block when the config says null


class SCANBranch(nn.Module):
    """One single SCAN model: its own region and word projections and one attention direction."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, direction: str, opts: dict, slope: float):
        super().__init__()
        self.direction = direction
        self.lambda_softmax, self.pooling, self.lambda_lse = opts["lambda_softmax"], opts["pooling"], opts["lambda_lse"]
        self.slope = slope
        self.regions = nn.Linear(image_dim, embed_dim)
        self.words = nn.Linear(text_dim, embed_dim)
        # the authors' image projection init (Xavier uniform, zero bias); words keep torch's default
        nn.init.xavier_uniform_(self.regions.weight)
        nn.init.zeros_(self.regions.bias)

    def embed_regions(self, regions: Tensor) -> Tensor:
        return l2norm(self.regions(regions.float()))

    def embed_words(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return l2norm(self.words(tokens.float())) * mask.unsqueeze(-1)

    def settings(self) -> tuple:
        return self.direction, self.lambda_softmax, self.pooling, self.lambda_lse, self.slope

    def pairwise(self, regions: Tensor, words: Tensor, mask: Tensor) -> Tensor:
        """Differentiable (n_img, n_cap) scores in one block (training batches are small)."""
        t2i = self.direction == "t2i"
        return block_scores(regions, gram(regions) if t2i else None, words, mask, None if t2i else gram(words),
                            *self.settings())


class SCAN(RetrievalModel):
    method_name = "scan"

    def __init__(self, config: dict, context: ModelContext):
        super().__init__()
        s = config["scan"]
        self.opts = dict(s)
        self.directions = DIRECTIONS if s["direction"] == "ensemble" else (s["direction"],)
        self.text_side = TextSide(context.text_encoder)
        branches = {}
        for k, d in enumerate(DIRECTIONS):
            if d not in self.directions:
                continue
            # own seed per direction: the ensemble's parts start equal to the single models of the same run seed
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(config["seed"]) * len(DIRECTIONS) + k)
                branches[d] = SCANBranch(context.image_dim, context.text_dim, config["model"]["embed_dim"], d, s[d],
                                         s["leaky_slope"])
        self.branches = nn.ModuleDict(branches)

    # ---------------------------------------------------------------------------------- encoders
    def embed_images(self, batch: dict) -> dict:
        return {f"{d}_regions": b.embed_regions(batch["regions"]) for d, b in self.branches.items()}

    def embed_captions(self, batch: dict) -> dict:
        tokens, mask = self.text_side(batch)
        mask = mask.bool()
        return {"mask": mask, **{f"{d}_words": b.embed_words(tokens, mask) for d, b in self.branches.items()}}

    # ---------------------------------------------------------------------------------- scores
    def _blocks(self, device) -> tuple[int, int]:
        bi, bc = _BLOCKS["cuda" if torch.device(device).type == "cuda" else "cpu"]
        return self.opts["score_block_images"] or bi, self.opts["score_block_captions"] or bc

    def _mean_over_branches(self, img: dict, cap: dict, scorer) -> Tensor:
        total = None
        for d, b in self.branches.items():
            s = scorer(img[f"{d}_regions"], cap[f"{d}_words"], cap["mask"], *b.settings())
            total = s if total is None else total + s
        return total / len(self.branches)

    def score(self, img: dict, cap: dict) -> Tensor:
        bi, bc = self._blocks(cap["mask"].device)
        return self._mean_over_branches(img, cap, lambda *a: blocked_scores(*a, block_images=bi, block_captions=bc))

    def reference_score(self, img: dict, cap: dict) -> Tensor:
        """The literal per-pair loop (tests and bench/xattn.py); same scores as `score`."""
        return self._mean_over_branches(img, cap, reference_scores)

    def eval_settings(self) -> dict:
        bi, bc = self._blocks(next(self.parameters()).device)
        return {"scorer": "scan_blocked", "block_images": bi, "block_captions": bc}

    # ---------------------------------------------------------------------------------- training
    def training_loss(self, batch: dict, epoch: int) -> tuple[Tensor, dict]:
        tokens, mask = self.text_side(batch)
        mask = mask.bool()
        idx = batch["image_index"]
        same = same_image_mask(idx)  # two captions of one image in a batch are not negatives
        parts, loss = {}, None
        for d, b in self.branches.items():
            sims = b.pairwise(b.embed_regions(batch["regions"]), b.embed_words(tokens, mask), mask)
            # VSE++ max violation, summed over the batch (the authors' ContrastiveLoss with --max_violation)
            part = btr_loss(sims, same, self.opts["margin"])
            parts[f"loss_{d}"] = float(part.detach())
            loss = part if loss is None else loss + part
        parts["loss"] = float(loss.detach())
        return loss, parts
