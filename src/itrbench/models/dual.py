"""The dual encoder every embedding method starts from: shared image and text encoders into one joint space.

The `vsepp` baseline is this model with the triplet loss; CODER adds its concept branch and losses on top.
"""
from __future__ import annotations

import torch

from itrbench.models.base import ModelContext, RetrievalModel
from itrbench.models.encoders import ImageEncoder, TextHead, TextSide


class DualEncoder(RetrievalModel):
    """Image and text encoders into one joint space; the score is a dot product of unit vectors."""

    def __init__(self, config: dict, context: ModelContext):
        super().__init__()
        m = config["model"]
        # construction order fixes the parameters' initial values per seed: image, then text
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
