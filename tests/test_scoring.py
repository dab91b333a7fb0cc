"""The batched cross-attention scorer equals the per-caption reference loop (SPEC §4.3, §7)."""
import pytest
import torch

from itrbench.methods.ascl.scoring import (CrossAttentionFusion, caption_lengths, fused_scores, reference_scores,
                              training_scores, useful_flops)


def make_inputs(n_img=7, n_cap=11, k=5, dim=16, heads=1, max_len=9, seed=0, dtype=torch.float32, prefix=True):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    fusion = CrossAttentionFusion(dim, heads, u1=0.7).to(dtype).eval()
    with torch.no_grad():  # larger than default weights, so attention is far from uniform
        for p in fusion.parameters():
            p.normal_(0, 0.4, generator=g)
    regions = torch.randn(n_img, k, dim, generator=g, dtype=dtype)
    glob = torch.randn(n_img, dim, generator=g, dtype=dtype)
    lengths = torch.randint(1, max_len + 1, (n_cap,), generator=g)
    lengths[0] = max_len
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    if not prefix:  # real tokens scattered (e.g. a cut-off token) and the padding not all at the end
        mask = mask[:, torch.randperm(max_len, generator=g)]
        mask[:, 0] = True
    words = torch.randn(n_cap, max_len, dim, generator=g, dtype=dtype) * mask[..., None]
    return fusion, regions, glob, words, mask


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("blocks", [(3, 4), (64, 64), (1, 1)])
def test_batched_equals_reference_loop(heads, blocks):
    fusion, regions, glob, words, mask = make_inputs(heads=heads, seed=heads)
    with torch.no_grad():
        ref = reference_scores(fusion, regions, glob, words, mask)
        got = fused_scores(fusion, regions, glob, words, mask, block_images=blocks[0], block_captions=blocks[1])
    assert got.shape == ref.shape == (7, 11)
    assert (got - ref).abs().max().item() <= 1e-5
    assert ref.std() > 0.05  # the scores actually differ between pairs


def test_exact_in_float64_and_with_scattered_masks():
    fusion, regions, glob, words, mask = make_inputs(heads=2, dtype=torch.float64, prefix=False, seed=3)
    with torch.no_grad():
        ref = reference_scores(fusion, regions, glob, words, mask)
        got = fused_scores(fusion, regions, glob, words, mask, block_images=2, block_captions=3)
    assert (got - ref).abs().max().item() <= 1e-12


def test_padding_width_and_padding_content_do_not_matter():
    fusion, regions, glob, words, mask = make_inputs(seed=4)
    wider = torch.cat([words, torch.randn(words.shape[0], 5, words.shape[2])], dim=1)  # garbage padding
    wider_mask = torch.cat([mask, torch.zeros(mask.shape[0], 5, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        a = fused_scores(fusion, regions, glob, words, mask)
        b = fused_scores(fusion, regions, glob, wider, wider_mask)
    assert (a - b).abs().max().item() <= 1e-6


def test_threads_and_block_sizes_give_the_same_scores():
    fusion, regions, glob, words, mask = make_inputs(n_img=9, n_cap=30, seed=5)
    with torch.no_grad():
        one = fused_scores(fusion, regions, glob, words, mask, block_images=4, block_captions=7, workers=1)
        two = fused_scores(fusion, regions, glob, words, mask, block_images=4, block_captions=7, workers=2)
        other = fused_scores(fusion, regions, glob, words, mask, block_images=9, block_captions=30)
    assert (one - two).abs().max().item() <= 1e-6
    assert (one - other).abs().max().item() <= 1e-6


def test_training_scores_match_and_carry_gradients():
    fusion, regions, glob, words, mask = make_inputs(heads=2, dtype=torch.float64, seed=6)
    fusion.train()
    got = training_scores(fusion, regions, glob, words, mask)
    with torch.no_grad():
        ref = reference_scores(fusion, regions, glob, words, mask)
    assert (got - ref).abs().max().item() <= 1e-12
    # the folded scorer's gradients are the reference's gradients
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in fusion.named_parameters()}
    fusion.zero_grad()
    (reference_scores(fusion, regions, glob, words, mask) * weights).sum().backward()
    for n, p in fusion.named_parameters():
        assert torch.allclose(fast_grads[n], p.grad, atol=1e-10), n


def test_bf16_autocast_path_is_close():
    fusion, regions, glob, words, mask = make_inputs(seed=7)
    with torch.no_grad():
        ref = fused_scores(fusion, regions, glob, words, mask, autocast=False)
        low = fused_scores(fusion, regions, glob, words, mask, autocast=True)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max().item() < 0.05


def test_caption_without_real_tokens_is_an_error():
    fusion, regions, glob, words, mask = make_inputs(seed=8)
    mask[2] = False
    with pytest.raises(ValueError, match="real token"):
        fused_scores(fusion, regions, glob, words, mask)


def test_caption_lengths_and_flop_count():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert caption_lengths(mask).tolist() == [2, 4, 1]
    # 1 image, one caption of 2 words, K=3, D=4, H=1: 4*3*2*4 + 3*2² + 2*3² + 2*4 + 2*3*4 = 96+12+18+8+24
    assert useful_flops(1, [2], 3, 4, 1) == 2 * 158


@pytest.mark.slow
def test_compiled_path_equals_reference_loop():
    # max_len 4: one length bucket, one compilation; 7 images in blocks of 4 and 11 captions in blocks of 4 exercise
    # the padded last image block and the repeated captions of the last caption block
    fusion, regions, glob, words, mask = make_inputs(max_len=4, seed=9)
    with torch.no_grad():
        ref = reference_scores(fusion, regions, glob, words, mask)
        got = fused_scores(fusion, regions, glob, words, mask, block_images=4, block_captions=4, compile=True)
    assert got.shape == ref.shape == (7, 11)
    assert (got - ref).abs().max().item() <= 1e-5


def test_compile_failure_falls_back_to_eager(monkeypatch):
    import itrbench.methods.ascl.scoring as scoring

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(scoring, "_compiled", {"fn": None, "broken": False})
    monkeypatch.setattr(torch, "compile", broken)
    fusion, regions, glob, words, mask = make_inputs(seed=10)
    with torch.no_grad():
        ref = reference_scores(fusion, regions, glob, words, mask)
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            got = fused_scores(fusion, regions, glob, words, mask, block_images=3, block_captions=4, compile=True)
        assert (got - ref).abs().max().item() <= 1e-5
        assert not scoring._compile_wanted(True, regions.device, 10 ** 9)  # stays off for the rest of the process


def test_compile_switch(monkeypatch):
    import itrbench.methods.ascl.scoring as scoring

    monkeypatch.setattr(scoring, "_compiled", {"fn": None, "broken": False})
    cpu, big, small = torch.device("cpu"), scoring._COMPILE_MIN_PAIRS, 5_000_000
    assert scoring._compile_wanted(None, cpu, big) and not scoring._compile_wanted(None, cpu, small)
    assert not scoring._compile_wanted(None, torch.device("cuda"), big)  # CUDA stays eager (bf16 autocast)
    assert scoring._compile_wanted(True, cpu, small) and not scoring._compile_wanted(False, cpu, big)
    # with the switch off the compiled scorer is never called
    monkeypatch.setattr(scoring, "_compiled_block_scores", lambda *a: pytest.fail("compiled path used"))
    fusion, regions, glob, words, mask = make_inputs(seed=11)
    with torch.no_grad():
        fused_scores(fusion, regions, glob, words, mask, compile=False)
