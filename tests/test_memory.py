"""Coupled ring-buffer queues, momentum update and the non-distributed gather."""
import copy

import torch
from torch import nn

from itrbench.methods.coder.memory import CoupledQueue, concat_all_gather, momentum_update


def keys(values, dim=2):
    return torch.tensor(values, dtype=torch.float32)[:, None].repeat(1, dim)


def test_queue_fills_wraps_and_drops_oldest():
    q = CoupledQueue(size=4, dim=2)
    assert q.valid_mask().tolist() == [False] * 4
    q.enqueue(keys([0, 1, 2]), keys([10, 11, 12]), torch.tensor([0, 1, 2]))
    assert q.valid_mask().tolist() == [True, True, True, False]      # unfilled slot ignored
    assert q.image[:3, 0].tolist() == [0, 1, 2] and q.count == 3 and q.ptr == 3
    q.enqueue(keys([3, 4, 5]), keys([13, 14, 15]), torch.tensor([3, 4, 5]))
    # items 0 and 1 (oldest) were overwritten; 2 survives; order in slots is [4, 5, 2, 3]
    assert q.image[:, 0].tolist() == [4, 5, 2, 3]
    assert q.text[:, 0].tolist() == [14, 15, 12, 13]                  # coupled: same slots
    assert q.image_id.tolist() == [4, 5, 2, 3]
    assert q.valid_mask().all() and q.count == 4 and q.ptr == 2


def test_queue_batch_larger_than_queue_keeps_newest():
    q = CoupledQueue(size=3, dim=1)
    q.enqueue(keys([0, 1, 2, 3, 4], 1), keys([0, 1, 2, 3, 4], 1), torch.arange(5))
    assert sorted(q.image[:, 0].tolist()) == [2, 3, 4] and q.count == 3


def test_negative_mask_excludes_same_image_and_unfilled():
    q = CoupledQueue(size=5, dim=1)
    q.enqueue(keys([0, 1, 2], 1), keys([0, 1, 2], 1), torch.tensor([7, 8, 7]))
    mask = q.negative_mask(torch.tensor([7, 9]))
    assert mask.tolist() == [[False, True, False, False, False],
                             [True, True, True, False, False]]


def test_queue_state_roundtrip():
    q = CoupledQueue(size=4, dim=3)
    q.enqueue(torch.randn(3, 3), torch.randn(3, 3), torch.tensor([1, 2, 3]))
    q2 = CoupledQueue(size=4, dim=3)
    q2.load_state(copy.deepcopy(q.state()))
    assert torch.equal(q2.image, q.image) and torch.equal(q2.text, q.text)
    assert q2.ptr == q.ptr and q2.count == q.count and torch.equal(q2.image_id, q.image_id)
    assert "image" not in dict(q.state_dict())          # not part of the inference checkpoint


def test_momentum_update_formula():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    mom = nn.Linear(3, 2)
    before = [p.detach().clone() for p in mom.parameters()]
    momentum_update(online, mom, m=0.9)
    for p_q, p_k, b in zip(online.parameters(), mom.parameters(), before):
        assert torch.allclose(p_k, 0.9 * b + 0.1 * p_q)
        assert not p_k.requires_grad or p_k.grad is None
    # m = 0 copies the online weights; m = 1 leaves the momentum copy untouched
    momentum_update(online, mom, m=0.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), mom.parameters()))


def test_momentum_update_without_grad_tracking():
    online, mom = nn.Linear(2, 2), nn.Linear(2, 2)
    out = online(torch.ones(1, 2)).sum()
    momentum_update(online, mom, m=0.5)
    out.backward()                                     # the update did not touch the online graph
    assert all(p.grad is None for p in mom.parameters())


def test_concat_all_gather_identity_without_distributed():
    x = torch.randn(3, 4)
    assert concat_all_gather(x) is x
