"""Bottom-up-attention TSV -> SCAN/VSE∞ precomp `{split}_ims.npy`.

The TSV is what Anderson et al.'s `generate_tsv.py` writes: one row per image, tab-separated
`image_id, image_w, image_h, num_boxes, boxes, features`, the last two base64-encoded float32 arrays
(num_boxes x 4 and num_boxes x 2048). Rows are streamed into a memory-mapped output in the order of an ids
list, so a COCO-sized split (~33 GB) never has to fit in RAM.
"""
from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from itrbench.errors import DataError
from itrbench.utils import atomic_path

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def normalise_id(raw: str) -> str:
    """Canonical form used to match ids across files: `"000123"`, `"123"` and `"123.jpg"` are one image.

    The ids list, the TSV and the image folder were usually made by different scripts, which disagree on
    zero padding and on whether the file extension is part of the id.
    """
    s = str(raw).strip()
    low = s.lower()
    for suffix in _IMAGE_SUFFIXES:
        if low.endswith(suffix):
            s = s[: -len(suffix)]
            break
    return str(int(s)) if s.isdigit() else s


def read_ids(path, captions_per_image: int = 5) -> list[str]:
    """Image ids of a split, one per line, in feature-row order (raw strings, stripped).

    Some precomp releases store one id per caption (each image id repeated on `captions_per_image`
    consecutive lines); such a file is collapsed to one id per image. Any other repetition is an error,
    because two feature rows for one image would silently skew retrieval metrics.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: ids file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: ids file is not UTF-8 text") from None
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DataError(f"{path}: ids file is empty; expected one image id per line")
    keys = [normalise_id(i) for i in ids]
    if len(set(keys)) == len(keys):
        return ids
    k = captions_per_image
    blocks_ok = len(keys) % k == 0 and all(len(set(keys[j : j + k])) == 1 for j in range(0, len(keys), k))
    collapsed = ids[::k]
    if blocks_ok and len({normalise_id(i) for i in collapsed}) == len(collapsed):
        return collapsed
    seen: set[str] = set()
    for line_no, key in enumerate(keys, 1):
        if key in seen:
            raise DataError(f"{path}: duplicate image id {ids[line_no - 1]!r} on line {line_no}; expected each image once "
                            f"(or each id repeated on {k} consecutive lines, one per caption)")
        seen.add(key)
    raise AssertionError("unreachable")  # pragma: no cover


def _raise_field_size_limit() -> None:
    # A 36 x 2048 float32 feature field is ~400 KB of base64, far above csv's 128 KB default.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32 bit on some platforms
            limit //= 2


def _b64_floats(text: str) -> np.ndarray:
    # Python-3 ports of generate_tsv.py sometimes wrote str(bytes), i.e. "b'...'"; accept that spelling too.
    if len(text) >= 3 and text[:2] in ("b'", 'b"') and text[-1] == text[1]:
        text = text[2:-1]
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return np.frombuffer(raw, dtype=np.float32)


def convert_tsv_to_precomp(
    tsv_paths,
    ids: list[str],
    out_path,
    *,
    num_boxes: int = 36,
    dim: int = 2048,
    ids_out=None,
    progress: bool = True,
) -> None:
    """Write `out_path` = float32 (len(ids), num_boxes, dim), row i holding the regions of image ids[i].

    `tsv_paths` are read in order (the COCO release is split into several files) and rows whose image is not
    in `ids` are skipped, so one TSV covering all splits serves every split. Reading stops once every id is
    found. Errors (missing id, wrong box count, bad base64, NaN) raise DataError naming file and image id;
    the output (and `ids_out`, if given: the ids written one per line) appears only on success.
    """
    tsv_paths = [Path(p) for p in ([tsv_paths] if isinstance(tsv_paths, (str, os.PathLike)) else tsv_paths)]
    if not tsv_paths:
        raise DataError("no TSV files given; expected at least one bottom-up-attention .tsv")
    for p in tsv_paths:
        if not p.is_file():
            raise DataError(f"{p}: TSV file not found")
    ids = [str(i).strip() for i in ids]
    if not ids:
        raise DataError(f"ids list for {out_path} is empty; expected at least one image id")
    row_of: dict[str, int] = {}
    for i, raw in enumerate(ids):
        key = normalise_id(raw)
        if key in row_of:
            raise DataError(f"image id {raw!r} appears twice in the ids list for {out_path}")
        row_of[key] = i

    _raise_field_size_limit()
    expected_floats = num_boxes * dim
    filled = np.zeros(len(ids), dtype=bool)
    with atomic_path(out_path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ids), num_boxes, dim))
        bar = tqdm(total=len(ids), desc=f"tsv -> {Path(out_path).name}", unit="img", disable=not progress)
        try:
            for tsv in tsv_paths:
                with tsv.open("r", encoding="utf-8", newline="") as fh:
                    for line_no, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
                        if not row or (line_no == 1 and row[0] == "image_id"):  # blank line / header
                            continue
                        if len(row) < 6:
                            raise DataError(f"{tsv}: line {line_no} (image id {row[0]!r}) has {len(row)} fields; "
                                            "expected 6: image_id, image_w, image_h, num_boxes, boxes, features")
                        image_id = row[0]
                        i = row_of.get(normalise_id(image_id))
                        if i is None:
                            continue
                        if filled[i]:
                            raise DataError(f"{tsv}: image id {image_id!r} occurs more than once in the TSV files")
                        try:
                            n = int(row[3])
                        except ValueError:
                            raise DataError(f"{tsv}: image id {image_id!r}: num_boxes {row[3]!r} is not an integer") from None
                        if n != num_boxes:
                            raise DataError(f"{tsv}: image id {image_id!r} has {n} boxes; expected {num_boxes} "
                                            "(precomp features use a fixed box count; see --boxes)")
                        try:
                            feats = _b64_floats(row[5])
                        except (binascii.Error, ValueError) as err:
                            raise DataError(f"{tsv}: image id {image_id!r}: features field is not valid base64 float32 ({err})") from None
                        if feats.size != expected_floats:
                            raise DataError(f"{tsv}: image id {image_id!r}: features hold {feats.size} floats; "
                                            f"expected {num_boxes} x {dim} = {expected_floats}")
                        if not np.isfinite(feats).all():
                            raise DataError(f"{tsv}: image id {image_id!r}: features contain NaN or Inf")
                        out[i] = feats.reshape(num_boxes, dim)
                        filled[i] = True
                        bar.update(1)
                        if filled.all():
                            break
                if filled.all():
                    break
        finally:
            bar.close()
        if not filled.all():
            missing = [ids[i] for i in np.flatnonzero(~filled)]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            names = ", ".join(str(p) for p in tsv_paths)
            raise DataError(f"image id {missing[0]!r}{more} from the ids list not found in TSV file(s) {names}")
        out.flush()
        del out
        if ids_out is not None:
            with atomic_path(ids_out) as ids_tmp:
                ids_tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
