"""Shared encoders: aggregators against literal references, padding invariance, unit norms."""
import torch

from itrbench.models.encoders import GPO, ImageEncoder, MaxPool, MeanPool, TextHead, positional_encoding


def test_positional_encoding_values():
    pe = positional_encoding(3, 4)
    # pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(...)
    assert torch.allclose(pe[2], torch.tensor([torch.sin(torch.tensor(2.0)), torch.cos(torch.tensor(2.0)),
                                               torch.sin(torch.tensor(2 / 100.0)), torch.cos(torch.tensor(2 / 100.0))]))


def test_gpo_equals_literal_sorted_weighted_sum():
    torch.manual_seed(0)
    gpo = GPO(8, 8)
    x = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None] < lengths[:, None]
    with torch.no_grad():
        out = gpo(x, mask)
        w = gpo.weights(lengths, 5)
    for b in range(3):
        n = int(lengths[b])
        assert torch.allclose(w[b, :n].sum(), torch.tensor(1.0), atol=1e-6) and (w[b, n:] == 0).all()
        for d in range(4):
            vals = sorted(x[b, :n, d].tolist(), reverse=True)
            ref = sum(vals[k] * float(w[b, k]) for k in range(n))
            assert abs(float(out[b, d]) - ref) < 1e-5


def test_gpo_weights_per_size_equal_one_gru_run_per_item():
    """The per-distinct-size GRU run is exact: each row equals the GRU run alone on that row's positions."""
    torch.manual_seed(2)
    gpo = GPO(8, 8)
    lengths = torch.tensor([4, 2, 4, 7, 2, 1, 7])
    with torch.no_grad():
        w = gpo.weights(lengths, 7)
        for b, n in enumerate(lengths.tolist()):
            out, _ = gpo.gru(positional_encoding(n, 8).unsqueeze(0))
            scores = gpo.score((out[..., :8] + out[..., 8:]) / 2).squeeze(-1)[0]
            ref = torch.softmax(scores / gpo.temperature, dim=0)
            assert torch.allclose(w[b, :n], ref, atol=1e-6) and (w[b, n:] == 0).all()


def test_padding_does_not_change_pooling():
    torch.manual_seed(1)
    for pool in (GPO(8, 8), MaxPool(), MeanPool()):
        x = torch.randn(1, 4, 6)
        padded = torch.cat([x, 100 * torch.randn(1, 3, 6)], dim=1)
        mask_short = torch.ones(1, 4, dtype=torch.bool)
        mask_long = torch.tensor([[True] * 4 + [False] * 3])
        assert torch.allclose(pool(x, mask_short), pool(padded, mask_long), atol=1e-6)


def test_max_and_mean_literal():
    x = torch.tensor([[[1.0, -2.0], [3.0, 5.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(MaxPool()(x, mask), torch.tensor([[3.0, 5.0]]))
    assert torch.equal(MeanPool()(x, mask), torch.tensor([[2.0, 1.5]]))


def test_encoders_unit_norm_and_shapes():
    torch.manual_seed(2)
    img = ImageEncoder(16, 12, "gpo", mlp=True, gpo_dim=8)
    txt = TextHead(10, 12, "max")
    v = img(torch.randn(4, 7, 16))
    w = txt(torch.randn(4, 9, 10), torch.ones(4, 9, dtype=torch.bool))
    assert v.shape == (4, 12) and w.shape == (4, 12)
    assert torch.allclose(v.norm(dim=1), torch.ones(4)) and torch.allclose(w.norm(dim=1), torch.ones(4))
