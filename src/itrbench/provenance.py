"""What a checkpoint was trained from, and whether a run folder may be resumed.

A checkpoint records its provenance: the resolved config (and its hash), a fingerprint of every file of the
train and eval splits (size + a cheap content hash), the keys of the frozen text caches it read, and the version
of the code that trains (a hash of the package's training-relevant source). A run resumes only when all of these
match and training is unfinished; a finished run asked to train again trains from scratch (that is what
`snakemake --forcerun train` means). A different *config* is refused: the folder belongs to another run.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

# Files up to this size are hashed whole; larger ones (real feature files, tens of GB) by sampled blocks.
FULL_HASH_BYTES = 16 * 2**20
SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 64 * 1024
EVALUATED = "provenance.json"  # sidecar written once metrics.json is: marks the run as finished


def file_digest(path: str | os.PathLike) -> str:
    """`size:hash` of a file: blake2b of the whole file when small, else of its head, tail and 64 spread blocks.

    Sampling keeps the fingerprint of a 33 GB feature file at a few MB of reads; any change of size, header,
    captions (text files are small, hashed whole) or regenerated features shows. A change confined to bytes
    between the samples of a huge file does not: the NaN scan and Snakemake's mtimes cover those.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            starts = [0, size - 2**20] + [i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)]
            for start in starts:
                f.seek(start)
                h.update(f.read(2**20 if start in (0, size - 2**20) else SAMPLE_BYTES))
    return f"{size}:{h.hexdigest()}"


def split_fingerprint(split) -> dict:
    """{file name: size:hash} for every file a PrecompSplit reads (features, captions, ids, global features)."""
    folder = split.folder
    names = [f"{split.split}_{kind}" for kind in ("ims.npy", "caps.txt", "ids.txt", "global.npy")]
    return {n: file_digest(folder / n) for n in names if (folder / n).is_file()}


@lru_cache(maxsize=None)
def code_version() -> str:
    """Hash of the source that decides what a run learns (models, losses, data, training, text; not reports/CLI)."""
    root = Path(__file__).resolve().parent
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.suffix not in (".py", ".yaml") or rel.startswith(("report/", "commands/")) or "__pycache__" in rel:
            continue
        if rel.startswith("methods/") and path.name in ("figures.py", "command.py"):  # a method's report / CLI code
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def record(config: dict, train_split, eval_split, text_keys: dict | None) -> dict:
    """The provenance of a run about to train on these inputs (stored in every checkpoint it writes)."""
    from itrbench.config import config_hash

    return {
        "config_hash": config_hash(config, ()),
        "config": config,
        "data": {"train": split_fingerprint(train_split), "eval": split_fingerprint(eval_split)},
        "text_cache": text_keys or {},
        "code": code_version(),
    }


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict | None, new: dict, limit: int = 3) -> str:
    """'train.epochs: 2 -> 3, model.embed_dim: 32 -> 64' (the first `limit` differing keys)."""
    if not old:
        return "the checkpoint does not record its config"
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    parts = [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    return ", ".join(parts) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def input_changes(old: dict | None, new: dict, parts=("data", "text_cache", "code")) -> list[str]:
    """What differs between two provenance records, besides the config: one short phrase each."""
    if not old:
        return ["the checkpoint records no provenance (written by an older itrbench)"]
    out = []
    if "data" in parts:
        for which in new["data"]:
            was, now = old.get("data", {}).get(which, {}), new["data"][which]
            for name in sorted(set(was) | set(now)):
                if was.get(name) != now.get(name):
                    out.append(f"{which} data {name} " + _describe_file(was.get(name), now.get(name)))
    if "text_cache" in parts:
        for which, key in new["text_cache"].items():
            if old.get("text_cache", {}).get(which) != key:
                out.append(f"{which} text cache key {str(old.get('text_cache', {}).get(which))[:12]} -> {key[:12]}")
    if "code" in parts and old.get("code") != new["code"]:
        out.append(f"code version {old.get('code')} -> {new['code']}")
    return out


def _describe_file(was: str | None, now: str | None) -> str:
    if was is None:
        return "is new"
    if now is None:
        return "is gone"
    (s0, _), (s1, _) = was.split(":"), now.split(":")
    return f"changed (size {s0} -> {s1} bytes)" if s0 != s1 else "changed (same size, different content)"


def write_evaluated(run_dir: Path, prov: dict, run_id: str) -> None:
    """Mark the run finished: its metrics were written from the checkpoint with this run id."""
    from itrbench.utils import write_json

    write_json(Path(run_dir) / EVALUATED, {"run_id": run_id, "evaluated": True,
                                           **{k: v for k, v in prov.items() if k != "config"}})


def was_evaluated(run_dir: Path, run_id: str | None) -> bool:
    path = Path(run_dir) / EVALUATED
    try:
        return run_id is not None and json.loads(path.read_text()).get("run_id") == run_id
    except (OSError, ValueError):
        return False
