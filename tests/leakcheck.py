"""Batch-invariance check for any RetrievalModel: a pair's score must not depend on what else is in the block.

    from leakcheck import assert_batch_invariant
    assert_batch_invariant(model, img, cap)   # img / cap: outputs of model.embed_images / embed_captions

It compares the full (n_img, n_cap) block with: the block with images and captions in another order, the four
quarter blocks, single images against every caption, every image against single captions, and single pairs.
Any batch-level normalisation, cross-pair softmax or padding leak shows up as a difference.
"""
from __future__ import annotations

import torch


def _rows(d: dict, index: torch.Tensor) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.index_select(0, index.to(value.device))
        else:
            out[key] = [value[i] for i in index.tolist()]
    return out


def _n(d: dict) -> int:
    return len(next(iter(d.values())))


def assert_batch_invariant(model, img: dict, cap: dict, atol: float = 1e-5, n_pairs: int = 6, seed: int = 0) -> None:
    """Raise AssertionError (naming the sub-block) if some score changes with the batch around the pair."""
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_img, n_cap = _n(img), _n(cap)
            full = model.score(img, cap).float().cpu()
            assert full.shape == (n_img, n_cap), f"score: expected ({n_img}, {n_cap}), got {tuple(full.shape)}"

            def check(ii: torch.Tensor, cc: torch.Tensor, what: str) -> None:
                got = model.score(_rows(img, ii), _rows(cap, cc)).float().cpu()
                want = full[ii][:, cc]
                err = (got - want).abs().max().item()
                assert err <= atol, f"batch invariance: {what} changes scores by {err:.2e} (atol {atol:.0e})"

            all_i, all_c = torch.arange(n_img), torch.arange(n_cap)
            check(torch.randperm(n_img, generator=g), torch.randperm(n_cap, generator=g),
                  "reordering images and captions")
            hi, hc = max(n_img // 2, 1), max(n_cap // 2, 1)
            for ii in (all_i[:hi], all_i[hi:]):
                for cc in (all_c[:hc], all_c[hc:]):
                    if len(ii) and len(cc):
                        check(ii, cc, f"the quarter block images {ii[0]}.. x captions {cc[0]}..")
            for i in torch.randint(n_img, (2,), generator=g):
                check(i.view(1), all_c, f"image {int(i)} alone against all captions")
            for c in torch.randint(n_cap, (2,), generator=g):
                check(all_i, c.view(1), f"all images against caption {int(c)} alone")
            for _ in range(n_pairs):
                i, c = torch.randint(n_img, (1,), generator=g), torch.randint(n_cap, (1,), generator=g)
                check(i, c, f"the single pair ({int(i)}, {int(c)})")
    finally:
        model.train(was_training)
