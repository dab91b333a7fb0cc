"""Training pairs and evaluation batches over a PrecompSplit, in the batch format of docs/architecture.md.

Batch keys: regions (B, R, D) float32, global (B, Dg) float32 [if the split has global features],
captions list[str], tokens (B, L, H) float32 + token_mask (B, L) bool [frozen text mode only],
image_index (B,) int64, caption_index (B,) int64.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from itrbench.data.precomp import PrecompSplit, read_rows
from itrbench.errors import DataError

TokenCache = tuple  # (feats float16 (n_captions, L, H) memmap, lengths int (n_captions,))


def _n_images(split: PrecompSplit, max_images: int | None) -> int:
    if max_images is None:
        return split.n_images
    if max_images < 1:
        raise DataError(f"{split.folder}: max_images = {max_images}; expected a positive number of images")
    return min(int(max_images), split.n_images)


def _check_cache(split: PrecompSplit, token_cache) -> None:
    if token_cache is None:
        return
    feats, lengths = token_cache
    if feats.ndim != 3 or len(feats) != split.n_captions or len(lengths) != split.n_captions:
        raise DataError(f"token cache for {split.folder}/{split.split}_caps.txt: features {tuple(feats.shape)} and "
                        f"{len(lengths)} lengths; expected ({split.n_captions}, L, H) and {split.n_captions} lengths")


def _tokens(token_cache, j: int) -> np.ndarray:
    feats, lengths = token_cache
    n = int(lengths[j])
    # The cache row is padded to the cache's max length: copy only the real tokens out of the mapping.
    return read_rows(feats, j)[:n].astype(np.float32)


class CaptionDataset(Dataset):
    """One item per caption: the caption, its image's regions (and global feature), optional cached tokens."""

    def __init__(self, split: PrecompSplit, token_cache=None, max_images: int | None = None):
        self.split = split
        self.token_cache = token_cache
        _check_cache(split, token_cache)
        self.n_images = _n_images(split, max_images)
        self.n_captions = self.n_images * split.captions_per_image
        self.has_global = split.global_feats is not None

    def __len__(self) -> int:
        return self.n_captions

    def __getstate__(self):
        # DataLoader workers started with `spawn` pickle the dataset: pickling a np.memmap would copy the
        # whole token cache, so send its file coordinates instead and map it again on arrival.
        state = dict(self.__dict__)
        if self.token_cache is not None and isinstance(self.token_cache[0], np.memmap) and self.token_cache[0].filename:
            f = self.token_cache[0]
            state["token_cache"] = (("memmap", f.filename, f.dtype.str, f.shape, f.offset), self.token_cache[1])
        return state

    def __setstate__(self, state):
        cache = state.get("token_cache")
        if cache is not None and isinstance(cache[0], tuple) and cache[0][0] == "memmap":
            _, filename, dtype, shape, offset = cache[0]
            state["token_cache"] = (np.memmap(filename, dtype=dtype, mode="r", shape=shape, offset=offset), cache[1])
        self.__dict__.update(state)

    def __getitem__(self, j: int) -> dict:
        if not 0 <= j < self.n_captions:
            raise IndexError(f"caption {j} out of range for {self.n_captions} captions")
        i = self.split.image_of(j)
        item = {"regions": self.split.read_regions(i), "caption": self.split.captions[j],
                "caption_index": j, "image_index": i}
        if self.has_global:
            item["global"] = self.split.read_global(i)
        if self.token_cache is not None:
            item["tokens"] = _tokens(self.token_cache, j)
        return item


    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch at once (torch's DataLoader calls this instead of __getitem__ per index): one read per
        array instead of one per item, and tokens padded in one copy. Same batch as collate([self[j] for j in
        indices]) (tests/test_dataset.py); at toy scale it took the data side of a step from ~13 to ~2 ms."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.n_captions:
            raise IndexError(f"caption indices out of range for {self.n_captions} captions")
        images = idx // self.split.captions_per_image
        batch = {"regions": torch.from_numpy(self.split.read_regions(images).astype(np.float32, copy=False)),
                 "captions": [self.split.captions[j] for j in idx.tolist()],
                 "image_index": torch.from_numpy(images.copy()),
                 "caption_index": torch.from_numpy(idx.copy())}
        if self.has_global:
            batch["global"] = torch.from_numpy(self.split.read_global(images).astype(np.float32, copy=False))
        if self.token_cache is not None:
            feats, lengths = self.token_cache
            n = np.asarray(lengths)[idx].astype(np.int64)
            rows = read_rows(feats, idx)[:, : int(n.max())]
            mask = torch.arange(rows.shape[1])[None, :] < torch.from_numpy(n)[:, None]
            batch["tokens"] = torch.from_numpy(rows.astype(np.float32)).masked_fill_(~mask[..., None], 0.0)
            batch["token_mask"] = mask
        return batch


def pad_tokens(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (len_i, H) arrays to (B, L, H) with L = max len_i, and a (B, L) mask True on real tokens."""
    width = seqs[0].shape[1]
    longest = max(len(s) for s in seqs)
    tokens = torch.zeros(len(seqs), longest, width, dtype=torch.float32)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for b, s in enumerate(seqs):
        tokens[b, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
        mask[b, : len(s)] = True
    return tokens, mask


def collate(items: list[dict] | dict) -> dict:
    """Stack CaptionDataset items into the batch format of docs/architecture.md ("Batches"); a batch already
    built by CaptionDataset.__getitems__ passes through."""
    if isinstance(items, dict):
        return items
    batch = {
        "regions": torch.from_numpy(np.stack([it["regions"] for it in items]).astype(np.float32, copy=False)),
        "captions": [it["caption"] for it in items],
        "image_index": torch.tensor([it["image_index"] for it in items], dtype=torch.int64),
        "caption_index": torch.tensor([it["caption_index"] for it in items], dtype=torch.int64),
    }
    if "global" in items[0]:
        batch["global"] = torch.from_numpy(np.stack([it["global"] for it in items]).astype(np.float32, copy=False))
    if "tokens" in items[0]:
        batch["tokens"], batch["token_mask"] = pad_tokens([it["tokens"] for it in items])
    return batch


def _derive_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) well: nearby seeds or epochs do not give correlated permutations.
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


class SeededSampler(Sampler):
    """Indices of a dataset in an order fixed by (seed, epoch): the same every time it is iterated.

    With world_size > 1 (DDP) the permutation is padded by wrapping to a multiple of world_size and
    rank r takes positions r, r + world_size, ... — as torch's DistributedSampler does.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size

    def order(self) -> np.ndarray:
        if self.shuffle:
            idx = np.random.default_rng(_derive_seed(self.seed, self.epoch)).permutation(self.n)
        else:
            idx = np.arange(self.n)
        if self.world_size > 1:
            total = -(-self.n // self.world_size) * self.world_size
            idx = np.resize(idx, total)[self.rank::self.world_size]
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return -(-self.n // self.world_size)


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0, num_workers: int = 0,
                drop_last: bool = False, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """DataLoader whose order depends only on (seed, epoch) (and rank/world_size under DDP)."""
    sampler = SeededSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    # The generator only seeds worker processes (torch draws their base seed from it): fixing it keeps
    # any per-worker randomness reproducible too.
    generator = torch.Generator().manual_seed(_derive_seed(seed, epoch))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, drop_last=drop_last, generator=generator, pin_memory=pin_memory,
                      persistent_workers=False)


def iter_image_batches(split: PrecompSplit, batch_size: int, *, max_images: int | None = None) -> Iterator[dict]:
    """Batches with one row per image, in order: regions[, global], image_index."""
    n = _n_images(split, max_images)
    has_global = split.global_feats is not None
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        batch = {"regions": torch.from_numpy(split.read_regions(sl)),
                 "image_index": torch.arange(sl.start, sl.stop, dtype=torch.int64)}
        if has_global:
            batch["global"] = torch.from_numpy(split.read_global(sl))
        yield batch


def iter_caption_batches(split: PrecompSplit, batch_size: int, *, token_cache=None,
                         max_images: int | None = None) -> Iterator[dict]:
    """Batches of captions, in order: captions[, tokens, token_mask], caption_index, image_index."""
    _check_cache(split, token_cache)
    n = _n_images(split, max_images) * split.captions_per_image
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        idx = torch.arange(start, stop, dtype=torch.int64)
        batch = {"captions": split.captions[start:stop], "caption_index": idx,
                 "image_index": idx // split.captions_per_image}
        if token_cache is not None:
            feats, lengths = token_cache
            lens = np.asarray(lengths[start:stop]).astype(np.int64)
            longest = max(int(lens.max()), 1)
            block = read_rows(feats, slice(start, stop))[:, :longest].astype(np.float32)
            mask = np.arange(longest)[None, :] < lens[:, None]
            block[~mask] = 0.0  # cache padding is zero already; enforce it so the mask is the only truth
            batch["tokens"] = torch.from_numpy(block)
            batch["token_mask"] = torch.from_numpy(mask)
        yield batch
