"""CODER's coupled memory banks (MoCo style): ring-buffer queues, momentum update, DDP-ready gather."""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """Concatenate `x` from every DDP rank along dim 0 (as MoCo does); identity when not distributed."""
    from itrbench.distributed import all_gather_cat

    return all_gather_cat(x)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum_model: nn.Module, m: float = 0.995) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (buffers are copied as they are)."""
    for p_q, p_k in zip(online.parameters(), momentum_model.parameters(), strict=True):
        p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)
    for b_q, b_k in zip(online.buffers(), momentum_model.buffers(), strict=True):
        b_k.copy_(b_q)


class CoupledQueue(nn.Module):
    """Two aligned ring buffers (image and text keys) plus the image id of every slot.

    Slot i of both queues comes from the same training pair, so one pointer and one fill count serve both.
    Slots never written are invalid (`valid_mask`); the oldest items are overwritten first.
    Buffers are non-persistent: they travel through `state()` / `load_state()` (the model's extra_state), so
    an inference checkpoint does not carry two 4096 x F queues.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"CoupledQueue: size must be >= 1, got {size}")
        self.size = int(size)
        self.register_buffer("image", torch.zeros(size, dim), persistent=False)
        self.register_buffer("text", torch.zeros(size, dim), persistent=False)
        self.register_buffer("image_id", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.ptr = 0
        self.count = 0

    @torch.no_grad()
    def enqueue(self, image_keys: Tensor, text_keys: Tensor, image_ids: Tensor, gathered: bool = False) -> None:
        """Write a batch of keys; under DDP the keys of every rank (gathered here unless `gathered`)."""
        image_ids = image_ids.detach().long().to(self.image_id.device)
        if not gathered:
            image_keys, text_keys, image_ids = (concat_all_gather(t.detach()) for t in (image_keys, text_keys, image_ids))
        b = image_keys.shape[0]
        if b > self.size:  # a batch larger than the queue: only its newest items fit
            image_keys, text_keys, image_ids = image_keys[-self.size:], text_keys[-self.size:], image_ids[-self.size:]
            b = self.size
        idx = (self.ptr + torch.arange(b, device=self.image.device)) % self.size
        self.image[idx] = image_keys.to(self.image.dtype)
        self.text[idx] = text_keys.to(self.text.dtype)
        self.image_id[idx] = image_ids
        self.ptr = (self.ptr + b) % self.size
        self.count = min(self.count + b, self.size)

    def valid_mask(self) -> Tensor:
        """True on filled slots; the queue fills from slot 0, so before it is full these are [0, count)."""
        return torch.arange(self.size, device=self.image.device) < self.count

    def negative_mask(self, anchor_image_ids: Tensor) -> Tensor:
        """(B, size) True where a slot is filled and holds a different image than the anchor."""
        return self.valid_mask()[None, :] & (self.image_id[None, :] != anchor_image_ids.long()[:, None])

    def state(self) -> dict:
        return {"image": self.image.cpu(), "text": self.text.cpu(), "image_id": self.image_id.cpu(),
                "ptr": self.ptr, "count": self.count}

    def load_state(self, d: dict) -> None:
        if tuple(d["image"].shape) != tuple(self.image.shape):
            raise ValueError(f"queue state has shape {tuple(d['image'].shape)}, this queue {tuple(self.image.shape)}")
        self.image.copy_(d["image"])
        self.text.copy_(d["text"])
        self.image_id.copy_(d["image_id"])
        self.ptr, self.count = int(d["ptr"]), int(d["count"])
