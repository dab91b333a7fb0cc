"""AsCL's asymmetry-sensitive contrastive loss (SPEC §4.3 Eqs. 5-7, §6 ascl_contrastive)."""
import math

import pytest
import torch

from itrbench.losses import ascl_contrastive
from itrbench.methods.ascl.losses import alpha_keep


def literal_loss(sims, gen, tau, same=None):
    """Eq. 5 written with Python loops over plain floats: mean over n of t2i_n + i2t_n."""
    n = len(sims)
    total = 0.0
    for a in range(n):
        pos = math.exp(sims[a][a] / tau)
        col = sum(math.exp(sims[m][a] / tau) for m in range(n) if m != a and not (same and same[m][a]))
        row = sum(math.exp(sims[a][m] / tau) for m in range(n) if m != a and not (same and same[a][m]))
        if gen is not None:
            row += sum(math.exp(g / tau) for g in gen[a] if g < sims[a][a] - 1e-6)  # alpha = 0 where it outscores or ties
        total += -math.log(pos / (pos + col)) - math.log(pos / (pos + row))
    return total / n


def test_hand_computed_two_pairs():
    sims = torch.tensor([[0.5, 0.2], [0.1, 0.4]])
    gen = torch.tensor([[0.3, 0.6], [0.45, 0.0]])  # gen[0,1] > 0.5 and gen[1,0] > 0.4 are dropped (alpha = 0)
    tau = 0.1
    e = math.exp
    t2i_0 = -math.log(e(5) / (e(5) + e(1)))
    t2i_1 = -math.log(e(4) / (e(4) + e(2)))
    i2t_0 = -math.log(e(5) / (e(5) + e(2) + e(3)))
    i2t_1 = -math.log(e(4) / (e(4) + e(1) + e(0)))
    expected = (t2i_0 + i2t_0 + t2i_1 + i2t_1) / 2
    assert ascl_contrastive(sims, gen, tau).item() == pytest.approx(expected, rel=1e-6)
    # without the filter the two dropped negatives would count
    no_filter = (t2i_0 + t2i_1 - math.log(e(5) / (e(5) + e(2) + e(3) + e(6)))
                 - math.log(e(4) / (e(4) + e(1) + e(0) + e(4.5)))) / 2
    assert ascl_contrastive(sims, gen, tau).item() != pytest.approx(no_filter, rel=1e-3)


def test_no_generated_negatives_is_symmetric_infonce():
    sims = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.0], [0.4, 0.5, 0.7]], dtype=torch.float64)
    tau = 0.05
    expected = (torch.nn.functional.cross_entropy(sims / tau, torch.arange(3))
                + torch.nn.functional.cross_entropy(sims.T / tau, torch.arange(3)))
    assert ascl_contrastive(sims, None, tau).item() == pytest.approx(expected.item(), rel=1e-6)
    empty = torch.empty(3, 0, dtype=torch.float64)
    assert ascl_contrastive(sims, empty, tau).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_literal_implementation(seed):
    g = torch.Generator().manual_seed(seed)
    n = 6
    sims = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1
    gen = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1
    tau = [0.05, 0.01, 0.2, 1.0, 0.1][seed]
    got = ascl_contrastive(sims, gen, tau).item()
    assert got == pytest.approx(literal_loss(sims.tolist(), gen.tolist(), tau), rel=1e-9)
    image = torch.randint(0, 3, (n,), generator=g)
    same = image[:, None] == image[None, :]
    got = ascl_contrastive(sims, gen, tau, same_image=same).item()
    assert got == pytest.approx(literal_loss(sims.tolist(), gen.tolist(), tau, same.tolist()), rel=1e-9)


def test_alpha_is_a_hard_filter_without_gradient():
    sims = torch.tensor([[0.5, 0.2], [0.1, 0.4]], requires_grad=True)
    gen = torch.tensor([[0.5, 0.6], [0.45, 0.0]], requires_grad=True)  # gen[0,0] ties the positive: dropped
    ascl_contrastive(sims, gen, 0.1).backward()
    assert gen.grad[0, 0] == 0 and gen.grad[0, 1] == 0 and gen.grad[1, 0] == 0   # dropped: no gradient at all
    assert gen.grad[1, 1] > 0                                # kept: pushed down
    assert sims.grad[0, 0] < 0 and sims.grad[1, 1] < 0      # positives pulled up


def test_row_of_generated_negatives_is_per_image():
    """gen_sims[n, m] = S(I_n, T⁻_m): the whole row n joins i2t_n; no column of gen_sims reaches t2i."""
    sims = torch.zeros(3, 3)
    gen = torch.full((3, 3), -1.0)
    base = ascl_contrastive(sims, gen, 1.0)
    bumped = gen.clone()
    bumped[0, 2] = -0.5  # only image 0's denominator grows
    diff = ascl_contrastive(sims, bumped, 1.0) - base
    expected = (math.log(3 + 2 * math.exp(-1) + math.exp(-0.5)) - math.log(3 + 3 * math.exp(-1))) / 3
    assert diff.item() == pytest.approx(expected, rel=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        ascl_contrastive(torch.zeros(2, 3), None, 0.1)
    with pytest.raises(ValueError, match="tau"):
        ascl_contrastive(torch.zeros(2, 2), None, 0.0)
    with pytest.raises(ValueError, match="gen_sims"):
        ascl_contrastive(torch.zeros(2, 2), torch.zeros(3, 2), 0.1)


def test_alpha_drops_a_negative_that_ties_the_positive():
    """A generated negative scoring like the positive (within 1e-6) is dropped, whatever the float rounding."""
    sims = torch.tensor([[0.5, 0.1], [0.2, 0.4]], dtype=torch.float64)
    without = ascl_contrastive(sims, torch.full((2, 1), -50.0, dtype=torch.float64), tau=0.1)
    for delta in (0.0, 1e-7, -1e-7, -9e-7):                 # ties: exactly equal, or off by rounding-sized amounts
        gen = torch.tensor([[0.5 + delta], [0.4 + delta]], dtype=torch.float64)
        assert ascl_contrastive(sims, gen, tau=0.1).item() == pytest.approx(without.item(), abs=1e-12), delta
        assert not alpha_keep(gen, sims.diagonal()).any()
    gen = torch.tensor([[0.5 - 2e-6], [0.4 - 2e-6]], dtype=torch.float64)   # clearly below: kept
    assert alpha_keep(gen, sims.diagonal()).all()
    assert ascl_contrastive(sims, gen, tau=0.1).item() > without.item() + 0.5
