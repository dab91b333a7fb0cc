"""The dual-encoder baseline: cosine similarity, hardest-negative triplet (BTR) on the shared encoders.

The method id `vsepp` is historical. With region features and GPO pooling this is VSE∞'s recipe (Chen et al.
2021), not VSE++'s (ResNet grid features, mean pooling); tables and figures call it "VSE∞ (GPO + BTR)".
"""
from __future__ import annotations

from itrbench import distributed
from itrbench.losses.triplet import btr_loss, same_image_mask
from itrbench.models.base import ModelContext
from itrbench.models.dual import DualEncoder


class VSEpp(DualEncoder):
    method_name = "vsepp"

    def __init__(self, config: dict, context: ModelContext):
        super().__init__(config, context)
        self.margin = config["vsepp"]["margin"]

    def training_loss(self, batch, epoch):
        # under torchrun: the global batch's loss on every rank (itrbench.distributed explains the gradient)
        v, w = distributed.gather_with_grad(self.encode_image(batch)), distributed.gather_with_grad(self.encode_text(batch))
        loss = btr_loss(v @ w.T, same_image_mask(distributed.all_gather_cat(batch["image_index"])), self.margin)
        return loss, {"loss": loss.item()}
