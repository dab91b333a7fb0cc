"""CaptionDataset / collate / make_loader / eval iterators against hand-built fixtures in the precomp layout."""
import pickle

import numpy as np
import pytest
import torch

from itrbench.data.dataset import (CaptionDataset, SeededSampler, collate, iter_caption_batches,
                                   iter_image_batches, make_loader)
from itrbench.data.precomp import open_split
from itrbench.errors import DataError

N, R, D, G, L, H = 6, 3, 4, 5, 7, 2


def image_value(i):
    return (i * 100 + np.arange(R * D, dtype=np.float32)).reshape(R, D)


@pytest.fixture
def split_dir(tmp_path):
    folder = tmp_path / "fx_precomp"
    folder.mkdir()
    np.save(folder / "train_ims.npy", np.stack([image_value(i) for i in range(N)]))
    np.save(folder / "train_global.npy", np.arange(N * G, dtype=np.float32).reshape(N, G))
    (folder / "train_caps.txt").write_text("".join(f"img{i} cap{k}\n" for i in range(N) for k in range(5)))
    np.save(folder / "plain_ims.npy", np.stack([image_value(i) for i in range(2)]))
    (folder / "plain_caps.txt").write_text("".join(f"p{j}\n" for j in range(10)))
    return tmp_path


@pytest.fixture
def cache(tmp_path):
    """A float16 token cache like text.py writes: (n_captions, L, H) memmap zero-padded, int32 lengths."""
    n = N * 5
    lengths = (np.arange(n) % 5 + 2).astype(np.int32)          # 2..6 tokens
    feats = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.float16, shape=(n, L, H))
    for j in range(n):
        feats[j, : lengths[j]] = (j + 0.5 * np.arange(lengths[j] * H)).reshape(-1, H)
    feats.flush()
    del feats
    return np.load(tmp_path / "cache.npy", mmap_mode="r"), lengths


def test_items(split_dir):
    ds = CaptionDataset(open_split(split_dir, "fx", "train"))
    assert len(ds) == 30
    it = ds[13]
    assert set(it) == {"regions", "global", "caption", "caption_index", "image_index"}
    assert it["caption"] == "img2 cap3" and it["caption_index"] == 13 and it["image_index"] == 2
    np.testing.assert_array_equal(it["regions"], image_value(2))
    np.testing.assert_array_equal(it["global"], np.arange(10, 15, dtype=np.float32))
    assert it["regions"].dtype == np.float32 and not isinstance(it["regions"], np.memmap)
    with pytest.raises(IndexError):
        ds[30]


def test_items_with_token_cache(split_dir, cache):
    ds = CaptionDataset(open_split(split_dir, "fx", "train"), token_cache=cache)
    it = ds[8]  # length 8 % 5 + 2 = 5
    expected = (8 + 0.5 * np.arange(5 * H)).reshape(5, H).astype(np.float16).astype(np.float32)
    assert it["tokens"].dtype == np.float32
    np.testing.assert_array_equal(it["tokens"], expected)


def test_batched_fetch_equals_collated_items(split_dir, cache):
    """__getitems__ (what the DataLoader calls) builds the same batch as collating __getitem__ items."""
    ds = CaptionDataset(open_split(split_dir, "fx", "train"), token_cache=cache)
    order = [29, 0, 8, 9, 7, 3]                                  # unsorted, images repeated, lengths 6 2 5 6 4 5
    got, ref = collate(ds.__getitems__(order)), collate([ds[j] for j in order])
    assert set(got) == set(ref) and got["captions"] == ref["captions"]
    for key in ("regions", "global", "tokens", "token_mask", "image_index", "caption_index"):
        assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), key
    loader = make_loader(ds, 4, shuffle=True, seed=0)
    first = next(iter(loader))
    assert torch.equal(first["tokens"], collate([ds[j] for j in first["caption_index"].tolist()])["tokens"])
    with pytest.raises(IndexError):
        ds.__getitems__([0, ds.n_captions])


def test_collate_batch_format(split_dir, cache):
    ds = CaptionDataset(open_split(split_dir, "fx", "train"), token_cache=cache)
    batch = collate([ds[j] for j in (0, 8, 29)])  # token lengths 2, 5, 6
    assert set(batch) == {"regions", "global", "captions", "tokens", "token_mask", "image_index", "caption_index"}
    assert batch["regions"].dtype == torch.float32 and batch["regions"].shape == (3, R, D)
    assert batch["global"].dtype == torch.float32 and batch["global"].shape == (3, G)
    assert batch["captions"] == ["img0 cap0", "img1 cap3", "img5 cap4"]
    assert batch["image_index"].dtype == torch.int64 and batch["image_index"].tolist() == [0, 1, 5]
    assert batch["caption_index"].dtype == torch.int64 and batch["caption_index"].tolist() == [0, 8, 29]
    assert batch["tokens"].shape == (3, 6, H) and batch["tokens"].dtype == torch.float32
    assert batch["token_mask"].dtype == torch.bool
    assert batch["token_mask"].tolist() == [[True] * 2 + [False] * 4, [True] * 5 + [False], [True] * 6]
    assert torch.all(batch["tokens"][0, 2:] == 0) and torch.all(batch["tokens"][1, 5:] == 0)
    np.testing.assert_array_equal(batch["tokens"][2].numpy(), cache[0][29, :6].astype(np.float32))
    np.testing.assert_array_equal(batch["regions"][2].numpy(), image_value(5))


def test_no_global_no_tokens_keys_absent(split_dir):
    ds = CaptionDataset(open_split(split_dir, "fx", "plain"))
    batch = collate([ds[0], ds[9]])
    assert set(batch) == {"regions", "captions", "image_index", "caption_index"}
    assert batch["image_index"].tolist() == [0, 1]


def test_cache_size_mismatch(split_dir, cache):
    with pytest.raises(DataError, match="token cache"):
        CaptionDataset(open_split(split_dir, "fx", "plain"), token_cache=cache)


def _order(loader):
    return torch.cat([b["caption_index"] for b in loader]).tolist()


def test_seeded_shuffling(split_dir):
    ds = CaptionDataset(open_split(split_dir, "fx", "train"))
    a = make_loader(ds, 4, shuffle=True, seed=1, epoch=0)
    first = _order(a)
    assert _order(a) == first                                  # iterating again: same order
    assert _order(make_loader(ds, 4, shuffle=True, seed=1, epoch=0)) == first
    assert sorted(first) == list(range(30)) and first != list(range(30))
    assert _order(make_loader(ds, 4, shuffle=True, seed=1, epoch=1)) != first
    assert _order(make_loader(ds, 4, shuffle=True, seed=2, epoch=0)) != first
    # independent of global RNG state and of worker processes
    torch.manual_seed(123)
    np.random.seed(7)
    assert _order(make_loader(ds, 4, shuffle=True, seed=1, epoch=0, num_workers=2)) == first
    assert _order(make_loader(ds, 4, shuffle=False, seed=1)) == list(range(30))
    dropped = list(make_loader(ds, 4, shuffle=True, seed=1, drop_last=True))
    assert len(dropped) == 7 and all(len(b["captions"]) == 4 for b in dropped)


def test_sampler_ranks_partition(split_dir):
    parts = [SeededSampler(30, shuffle=True, seed=0, epoch=3, rank=r, world_size=4).order() for r in range(4)]
    assert all(len(p) == 8 for p in parts)                     # 30 padded to 32
    flat = np.concatenate(parts)
    assert set(flat.tolist()) == set(range(30))
    whole = SeededSampler(30, shuffle=True, seed=0, epoch=3).order()
    np.testing.assert_array_equal(parts[1], np.resize(whole, 32)[1::4])


def test_max_images(split_dir, cache):
    split = open_split(split_dir, "fx", "train")
    ds = CaptionDataset(split, token_cache=cache, max_images=2)
    assert len(ds) == 10 and max(_order(make_loader(ds, 3, shuffle=True, seed=0))) == 9
    imgs = list(iter_image_batches(split, 4, max_images=3))
    assert [b["image_index"].tolist() for b in imgs] == [[0, 1, 2]]
    caps = list(iter_caption_batches(split, 4, token_cache=cache, max_images=3))
    assert torch.cat([b["caption_index"] for b in caps]).tolist() == list(range(15))


def test_iter_image_batches(split_dir):
    split = open_split(split_dir, "fx", "train")
    batches = list(iter_image_batches(split, 4))
    assert [set(b) for b in batches] == [{"regions", "global", "image_index"}] * 2
    regions = torch.cat([b["regions"] for b in batches]).numpy()
    np.testing.assert_array_equal(regions, np.stack([image_value(i) for i in range(N)]))
    assert torch.cat([b["image_index"] for b in batches]).tolist() == list(range(N))
    assert batches[1]["global"].shape == (2, G) and batches[0]["regions"].dtype == torch.float32


def test_iter_caption_batches(split_dir, cache):
    split = open_split(split_dir, "fx", "train")
    batches = list(iter_caption_batches(split, 7, token_cache=cache))
    assert [len(b["captions"]) for b in batches] == [7, 7, 7, 7, 2]
    b = batches[1]                                               # captions 7..13, lengths 4,5,6,2,3,4,5
    assert set(b) == {"captions", "tokens", "token_mask", "caption_index", "image_index"}
    assert b["captions"][0] == "img1 cap2"
    assert b["image_index"].tolist() == [1, 1, 1, 2, 2, 2, 2]
    assert b["tokens"].shape == (7, 6, H) and b["token_mask"].sum(1).tolist() == [4, 5, 6, 2, 3, 4, 5]
    # same content as collating dataset items
    ref = collate([CaptionDataset(split, token_cache=cache)[j] for j in range(7, 14)])
    assert torch.equal(ref["tokens"], b["tokens"]) and torch.equal(ref["token_mask"], b["token_mask"])
    plain = next(iter_caption_batches(split, 3))
    assert set(plain) == {"captions", "caption_index", "image_index"}


def test_pickled_dataset_does_not_copy_mappings(split_dir, cache):
    ds = CaptionDataset(open_split(split_dir, "fx", "train"), token_cache=cache)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert isinstance(ds2.token_cache[0], np.memmap) and isinstance(ds2.split.images, np.memmap)
    for key in ("regions", "global", "tokens"):
        np.testing.assert_array_equal(ds2[17][key], ds[17][key])
