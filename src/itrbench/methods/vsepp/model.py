"""The dual-encoder baseline: cosine similarity, hardest-negative triplet (BTR) on the shared encoders.

The method id `vsepp` is historical. With region features and GPO pooling this is VSE∞'s recipe (Chen et al.
2021), not VSE++'s (ResNet grid features, mean pooling); tables and figures call it "VSE∞ (GPO + BTR)".
"""
from __future__ import annotations

import torch

from itrbench import distributed
from itrbench.losses.triplet import btr_loss
from itrbench.models.base import ModelContext, RetrievalModel, register_method
from itrbench.models.encoders import ImageEncoder, TextHead, TextSide


def same_image_mask(image_index: torch.Tensor) -> torch.Tensor:
    """(N, N) True where caption j's image is row i's image: such pairs are never negatives."""
    return image_index[:, None] == image_index[None, :]


class DualEncoder(RetrievalModel):
    """Image and text encoders into one joint space; the score is a dot product of unit vectors."""

    def __init__(self, config: dict, context: ModelContext):
        super().__init__()
        m = config["model"]
        self.image = ImageEncoder(context.image_dim, m["embed_dim"], m["aggregator"], m["image_mlp"], m["gpo_dim"])
        self.text_side = TextSide(context.text_encoder)
        self.text = TextHead(context.text_dim, m["embed_dim"], m["aggregator"], m["gpo_dim"])

    def encode_image(self, batch: dict) -> torch.Tensor:
        return self.image(batch["regions"])

    def encode_text(self, batch: dict, prefix: str = "") -> torch.Tensor:
        return self.text(*self.text_side(batch, prefix))

    def embed_images(self, batch):
        return {"emb": self.encode_image(batch)}

    def embed_captions(self, batch):
        return {"emb": self.encode_text(batch)}

    def score(self, img, cap):
        return img["emb"].float() @ cap["emb"].float().T


@register_method("vsepp")
class VSEpp(DualEncoder):
    def __init__(self, config: dict, context: ModelContext):
        super().__init__(config, context)
        self.margin = config["vsepp"]["margin"]

    def training_loss(self, batch, epoch):
        # under torchrun: the global batch's loss on every rank (itrbench.distributed explains the gradient)
        v, w = distributed.gather_with_grad(self.encode_image(batch)), distributed.gather_with_grad(self.encode_text(batch))
        loss = btr_loss(v @ w.T, same_image_mask(distributed.all_gather_cat(batch["image_index"])), self.margin)
        return loss, {"loss": loss.item()}
