"""CODER losses (Eqs. 3-5) and the VSE++ triplet loss against literal per-anchor loops and hand-computed values."""
import math

import pytest
import torch

from itrbench.methods.coder.losses import dcl_directional, dcl_loss, diversity
from itrbench.losses.triplet import btr_loss


# ---- slow, obviously-correct references written straight from SPEC §4.2 ----

def ref_diversity(sims, neg_mask, eps=0.1):
    raw = []
    for n in range(sims.shape[0]):
        vals = [float(sims[n, q]) for q in range(sims.shape[1]) if neg_mask[n, q]]
        if vals:
            e1 = sum(vals) / len(vals)
            e2 = sum(v * v for v in vals) / len(vals)
            sd = math.sqrt(max(e2 - e1 * e1, 0.0))
        else:
            sd = 0.0
        raw.append(1.0 if sd == 0 else 1.0 / (1.0 / (1.0 + math.exp(-eps / sd))))
    top = max(raw)
    return [d / top for d in raw]


def ref_dcl(sims, pos_index, neg_mask, div=None, mu=0.1, gamma=0.3):
    total = 0.0
    for n in range(sims.shape[0]):
        d = 1.0 if div is None else float(div[n])
        acc = 0.0
        for q in range(sims.shape[1]):
            if neg_mask[n, q]:
                acc += math.exp((float(sims[n, q]) - gamma) / (mu * d))
        total += mu * (math.log(1.0 + acc) - math.log(1.0 + float(sims[n, int(pos_index[n])])))
    return total / sims.shape[0]


def ref_btr(sims, same, margin=0.2):
    n = sims.shape[0]
    total = 0.0
    for i in range(n):
        costs = [max(0.0, margin + float(sims[i, j]) - float(sims[i, i])) for j in range(n) if not same[i, j]]
        total += max(costs, default=0.0)
    for j in range(n):
        costs = [max(0.0, margin + float(sims[i, j]) - float(sims[j, j])) for i in range(n) if not same[i, j]]
        total += max(costs, default=0.0)
    return total


def random_case(seed, n=7, m=11, p_neg=0.7):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(n, m, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(n, m, generator=g) < p_neg
    pos = torch.randint(0, m, (n,), generator=g)
    neg[torch.arange(n), pos] = False  # the positive is never a negative
    return sims, pos, neg


# ---- diversity ----

@pytest.mark.parametrize("seed", range(5))
def test_diversity_matches_literal_loop(seed):
    sims, _, neg = random_case(seed)
    neg[0] = False          # an anchor without negatives -> div 1 before normalisation
    got = diversity(sims, neg)
    want = ref_diversity(sims, neg)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # float32 input computes in float32 and agrees to float32 precision
    assert torch.allclose(diversity(sims.float(), neg).double(), got, atol=1e-5)
    assert got.max().item() == pytest.approx(1.0)


def test_diversity_hand_computed():
    # anchor 0: negatives {0.1, 0.5} -> SD 0.2 -> div = 1 + exp(-0.5); anchor 1: negatives {0.3, 0.3} -> SD 0 -> div 1
    sims = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.8, 0.3]])
    neg = torch.tensor([[False, True, True], [True, False, True]])
    d0 = 1 + math.exp(-0.5)
    got = diversity(sims, neg, eps=0.1)
    assert got.tolist() == pytest.approx([1.0, 1.0 / d0], abs=1e-6)


def test_diversity_has_no_gradient():
    sims = torch.rand(4, 5, requires_grad=True)
    out = diversity(sims, torch.ones(4, 5, dtype=torch.bool))
    assert not out.requires_grad


# ---- directional DCL ----

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("explicit", [False, True])
def test_dcl_matches_literal_loop(seed, explicit):
    sims, pos, neg = random_case(seed)
    neg[2] = False          # an anchor without negatives: its term is just -mu*log(1+S_pos)
    div = diversity(sims, neg) if explicit else None
    got = dcl_directional(sims, pos, neg, div=div, mu=0.1, gamma=0.3)
    want = ref_dcl(sims, pos, neg, div=div)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_dcl_hand_computed():
    # one anchor, positive 0.8, negatives 0.5 and 0.1 (0.4 is masked out), mu 0.1, gamma 0.3, div 0.5
    sims = torch.tensor([[0.8, 0.5, 0.4, 0.1]])
    neg = torch.tensor([[False, True, False, True]])
    # (0.5-0.3)/(0.05) = 4, (0.1-0.3)/0.05 = -4
    want = 0.1 * (math.log(1 + math.exp(4) + math.exp(-4)) - math.log(1.8))
    got = dcl_directional(sims, torch.tensor([0]), neg, div=torch.tensor([0.5]))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_dcl_mask_removes_non_negatives_exactly():
    # changing any similarity that is neither a negative nor the positive must not change the loss at all
    sims, pos, neg = random_case(3)
    div = diversity(sims, neg)
    base = dcl_directional(sims, pos, neg, div=div)
    other = ~neg
    other[torch.arange(len(pos)), pos] = False
    assert other.any()
    hacked = sims.clone()
    hacked[other] = 0.999
    assert dcl_directional(hacked, pos, neg, div=div).item() == base.item()
    assert torch.equal(diversity(hacked, neg), div)


def test_dcl_stable_for_extreme_logits():
    sims = torch.tensor([[0.5, 1.0, 1.0], [0.5, -1.0, -1.0]])
    neg = torch.tensor([[False, True, True], [False, True, True]])
    div = torch.tensor([1e-3, 1e-3])   # logits (1-0.3)/1e-4 = 7000: naive exp overflows
    out = dcl_directional(sims, torch.tensor([0, 0]), neg, div=div)
    assert torch.isfinite(out)
    want0 = 0.1 * (math.log(2) + 7000 - math.log(1.5))     # log(1 + 2 e^7000) ~ 7000 + log 2
    want1 = 0.1 * (0.0 - math.log(1.5))                      # e^-13000 vanishes
    assert out.item() == pytest.approx((want0 + want1) / 2, rel=1e-6)


def test_gradient_flows_through_sims_not_div():
    sims, pos, neg = random_case(1)
    sims = sims.float().requires_grad_(True)
    div = diversity(sims, neg)
    loss = dcl_directional(sims, pos, neg, div=div)
    loss.backward()
    g = sims.grad
    assert torch.isfinite(g).all()
    # only negatives and positives receive gradient
    other = ~neg.clone()
    other[torch.arange(len(pos)), pos] = False
    assert torch.all(g[other] == 0)
    assert torch.all(g[neg] > 0)                       # pushing a negative up raises the loss
    assert torch.all(g[torch.arange(len(pos)), pos] < 0)
    # the gradient equals the one obtained with div held constant
    sims2 = sims.detach().clone().requires_grad_(True)
    dcl_directional(sims2, pos, neg, div=div.clone()).backward()
    assert torch.allclose(g, sims2.grad)


def test_dcl_loss_bidirectional_same_image():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(6, 6, generator=g, dtype=torch.float64)
    image = torch.tensor([0, 0, 1, 2, 2, 3])
    same = image[:, None] == image[None, :]
    pos = torch.arange(6)
    dr, dc = diversity(sims, ~same), diversity(sims.t(), ~same.t())
    want = ref_dcl(sims, pos, ~same, dr) + ref_dcl(sims.t(), pos, ~same.t(), dc)
    assert dcl_loss(sims, same, dr, dc).item() == pytest.approx(want, rel=1e-6)


# ---- BTR ----

@pytest.mark.parametrize("seed", range(4))
def test_btr_matches_literal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(8, 8, generator=g, dtype=torch.float64) * 2 - 1
    image = torch.randint(0, 5, (8,), generator=g)
    same = image[:, None] == image[None, :]
    assert btr_loss(sims, same).item() == pytest.approx(ref_btr(sims, same), rel=1e-10)
    assert btr_loss(sims, same, reduction="mean").item() == pytest.approx(ref_btr(sims, same) / 8, rel=1e-6)


def test_btr_hand_computed():
    sims = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.75, 0.0, 0.7]])
    same = torch.eye(3, dtype=torch.bool)
    # image anchors: row0 hardest 0.8 -> 0.1; row1 0.6 -> 0.3; row2 0.75 -> 0.25
    # caption anchors: col0 hardest 0.75 -> 0.05; col1 0.8 -> 0.5; col2 0.6 -> 0.1
    assert btr_loss(sims, same).item() == pytest.approx(0.1 + 0.3 + 0.25 + 0.05 + 0.5 + 0.1, abs=1e-6)
    # captions 0 and 1 share an image: the 0.8 is no longer a negative
    same2 = same.clone()
    same2[0, 1] = same2[1, 0] = True
    # row0: only 0.1 -> 0; col1: only 0.0 -> 0; row1: only 0.6 -> 0.3; col0: only 0.75 -> 0.05
    assert btr_loss(sims, same2).item() == pytest.approx(0.0 + 0.3 + 0.25 + 0.05 + 0.0 + 0.1, abs=1e-6)


def test_low_precision_inputs_compute_in_float32():
    sims, pos, neg = random_case(4)
    s16 = sims.to(torch.bfloat16)
    div = diversity(s16, neg)
    out = dcl_directional(s16, pos, neg, div=div)
    assert div.dtype == torch.float32 and out.dtype == torch.float32
    assert out.item() == pytest.approx(dcl_directional(s16.double(), pos, neg, div=div.double()).item(), rel=1e-5)
