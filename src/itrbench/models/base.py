"""The interface every retrieval method implements (see docs/architecture.md); methods/ names each one's class."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

@dataclass
class ModelContext:
    image_dim: int                     # region feature width D
    text_dim: int                      # token feature width H (cache) or encoder hidden size
    global_dim: int | None = None      # global image feature width, if the split has one
    text_encoder: Any = None           # TextEncoder when text.mode == finetune, else None
    train_split: Any = None            # PrecompSplit of the training data
    n_train_captions: int = 0
    work_dir: Path = field(default_factory=lambda: Path("."))
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    token_cache_factory: Any = None    # callable(tag, captions) -> (feats, lengths) for generated caption sets


class RetrievalModel(nn.Module):
    method_name = "base"

    def embed_images(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def embed_captions(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def score(self, img: dict, cap: dict) -> torch.Tensor:
        """(n_img, n_cap) similarities; a pair's score must depend only on that pair."""
        raise NotImplementedError

    def training_loss(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def param_groups(self, lr: float, text_lr_scale: float) -> list[dict]:
        """Adam groups: the fine-tuned transformer (if any) learns at lr * text_lr_scale."""
        text = [p for n, p in self.named_parameters() if p.requires_grad and ".encoder.model." in f".{n}"]
        ids = {id(p) for p in text}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": lr}]
        if text:
            groups.append({"params": text, "lr": lr * text_lr_scale})
        return groups

    # optional hooks
    def before_step(self) -> None: ...
    def after_step(self) -> None: ...
    def on_epoch_end(self, trainer, epoch: int) -> dict | None: ...

    def eval_settings(self) -> dict:
        """Settings of `score` that change its cost but not its values (recorded in metrics.json)."""
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None: ...


def build_model(config: dict, context: ModelContext) -> RetrievalModel:
    from itrbench import methods  # the plugin registry names each method's model class (imported here, lazily)

    return methods.get(config["method"]).model_class()(config, context)
