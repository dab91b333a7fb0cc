"""Does a model learn? A short Adam run over a few fixed batches, returning the loss of every step.

    from learncheck import training_losses
    losses = training_losses(model, batches, steps=80, lr=1e-2)
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])

Batches are visited in turn (step k uses batches[k % len(batches)]); the model's step hooks run as the Trainer runs them.
"""
from __future__ import annotations

import torch


def training_losses(model, batches: list[dict], steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        model.before_step()
        loss, _ = model.training_loss(batches[step % len(batches)], epoch=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step()
        losses.append(loss.item())
    return losses
