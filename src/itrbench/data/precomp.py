"""Reader for the SCAN / VSE∞ "precomp" layout (SPEC §2.1), shared by real data and ToyScenes.

    <root>/<dataset>_precomp/{split}_ims.npy      float32 (n_images, R, D) region features
    <root>/<dataset>_precomp/{split}_caps.txt     one caption per line, 5 consecutive lines per image
    <root>/<dataset>_precomp/{split}_ids.txt      optional image ids, one per line
    <root>/<dataset>_precomp/{split}_global.npy   optional float32 (n_images, Dg) global features

Feature files are memory-mapped and never loaded whole (COCO train is ~33 GB). Rows are copied out with
`read_rows` (positional reads on the mapped file), so the data passes through the shared page cache and
the process's resident set does not grow with the number of rows touched (bench/memmap.py, docs/data.md).
"""
from __future__ import annotations

import mmap
import os
import weakref
from pathlib import Path

import numpy as np

from itrbench.errors import DataError

# How much feature data `open_split` scans for NaN/inf up front: all of a toy file, the head of a real one.
_OPEN_CHECK_BYTES = 32 * 2**20


# --------------------------------------------------------------------------------------------------
# npy files: header validation and memory-mapped row reads
# --------------------------------------------------------------------------------------------------
def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, checking that the file holds all the bytes it declares."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # pragma: no cover - numpy rejects unknown versions in read_magic already
                raise ValueError(f"unsupported npy version {version}")
            offset = f.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from None
    if fortran:
        raise DataError(f"{path}: array is stored in Fortran order; expected C order (np.save of a C-contiguous array)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(f"{path}: file is {what}: header declares shape {tuple(shape)} {dtype} "
                        f"= {expected} bytes, file has {actual} bytes")
    return tuple(shape), dtype, offset


def open_npy(path: Path, ndim: int, what: str) -> np.memmap:
    """Memory-map a float32 .npy of the given rank after validating its header and size."""
    shape, dtype, _ = read_npy_header(path)
    if dtype != np.float32:
        raise DataError(f"{path}: dtype {dtype}; expected float32 {what}")
    if len(shape) != ndim:
        raise DataError(f"{path}: shape {shape}; expected {ndim} dimensions {what}")
    if shape[0] == 0:
        raise DataError(f"{path}: holds 0 rows; expected at least one image")
    return np.load(path, mmap_mode="r")


# Reading rows through the mapping would leave their pages (and, through the kernel's fault-around, pages
# of neighbouring rows) mapped into the process: after one random-access epoch the resident set holds a
# good part of the file (measured: ~30 KB per row, i.e. ~3 GB for COCO train). So rows of a file-backed
# memmap are read with positional reads (pread) into fresh buffers: the data goes through the shared page
# cache, never through this process's page tables. The mapping itself stays for shape / ad-hoc access.
_FDS: dict[int, tuple[int, int]] = {}          # id(memmap) -> (pid, fd) of the file behind it
_FAULT_AROUND = 64 * 1024                        # Linux default fault_around_bytes


def _file_fd(arr) -> int | None:
    """A read-only fd on the file behind a base np.memmap (one per array and process), else None."""
    if not (isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename
            and arr.flags.c_contiguous and hasattr(os, "preadv")):
        return None  # a view, an in-memory array or a platform without preadv: read through the mapping
    hit = _FDS.get(id(arr))
    if hit is not None and hit[0] == os.getpid():
        return hit[1]
    fd = os.open(arr.filename, os.O_RDONLY)
    _FDS[id(arr)] = (os.getpid(), fd)
    weakref.finalize(arr, _close_fd, id(arr), fd, os.getpid())
    return fd


def _close_fd(key: int, fd: int, pid: int) -> None:
    if os.getpid() == pid:
        try:
            os.close(fd)
        except OSError:
            pass
        if _FDS.get(key, (None,))[0] == pid:
            del _FDS[key]


def _pread_rows(arr, fd: int, start: int, stop: int, out: np.ndarray) -> None:
    """Fill `out` (rows start..stop of arr) from the file; loops because large reads may come back short."""
    row_bytes = arr.strides[0]
    buf = memoryview(out).cast("B")
    pos = arr.offset + start * row_bytes
    while buf.nbytes:
        n = os.preadv(fd, [buf], pos)
        if n <= 0:
            raise DataError(f"{arr.filename}: unexpected end of file at byte {pos}; was it truncated while open?")
        buf, pos = buf[n:], pos + n


def release_rows(arr, start: int, stop: int) -> None:
    """Drop the process's mapping of rows [start, stop) of a memmap (no-op for plain arrays / other OSes).

    Used when rows were read through the mapping (views, platforms without preadv). The data stays in
    the page cache. The range is widened to the kernel's fault-around window, which maps neighbours too.
    """
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED") or stop <= start:
        return
    # byte position of arr[start] inside the mapping (np.memmap maps from an allocation-granularity boundary)
    try:
        base = np.frombuffer(mm, np.uint8, count=1).ctypes.data
    except (TypeError, ValueError):  # read-only mmap objects refuse frombuffer on some versions
        return
    lo = arr.ctypes.data - base + start * arr.strides[0]
    hi = arr.ctypes.data - base + stop * arr.strides[0]
    lo = max(0, lo - lo % _FAULT_AROUND)
    hi = min(-(-hi // _FAULT_AROUND) * _FAULT_AROUND, len(mm))
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError):  # closed mapping or a platform that refuses: only memory use is at stake
        pass


def read_rows(arr, index) -> np.ndarray:
    """Copy rows of a (memory-mapped) array — int, slice or 1-d int array — without growing the resident set."""
    fd = _file_fd(arr)
    n = len(arr)
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i %= n
        runs, shape = [(i, i + 1)], arr.shape[1:]
    elif isinstance(index, slice):
        start, stop, step = index.indices(n)
        if step != 1:
            return read_rows(arr, np.arange(start, stop, step))
        stop = max(start, stop)
        runs, shape = [(start, stop)], (stop - start,) + arr.shape[1:]
    else:
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        idx %= max(n, 1)
        # consecutive indices are read in one call
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, breaks) if r.size]
        shape = (idx.size,) + arr.shape[1:]
    out = np.empty(shape, dtype=arr.dtype)
    flat = out.reshape((-1,) + arr.shape[1:])
    row = 0
    for start, stop in runs:
        if fd is not None:
            _pread_rows(arr, fd, start, stop, flat[row:row + stop - start])
        else:
            flat[row:row + stop - start] = arr[start:stop]
            release_rows(arr, start, stop)
        row += stop - start
    return out


# --------------------------------------------------------------------------------------------------
# text files
# --------------------------------------------------------------------------------------------------
def read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file, stripped. Empty interior lines are errors; trailing blank lines are not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {data[err.start]:#04x}); "
                        f"expected a UTF-8 text file of {what}") from None
    if text.startswith("\ufeff"):  # a BOM from Windows editors is not part of the first caption
        text = text[1:]
    # split on "\n" only: str.splitlines would also split on U+2028 etc. inside a caption
    lines = [ln.strip() for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{path}: file is empty; expected {what}, one per line")
    for i, ln in enumerate(lines):
        if not ln:
            raise DataError(f"{path}: line {i + 1} is empty; expected {what}, one per line")
    return lines


# --------------------------------------------------------------------------------------------------
# one split
# --------------------------------------------------------------------------------------------------
class PrecompSplit:
    """One split of one dataset in the precomp layout; features memory-mapped, captions in memory.

    Pickling (DataLoader workers under the `spawn` start method) drops the mappings and re-opens them
    on first use: pickling a np.memmap would otherwise copy the whole file into the pickle.
    """

    def __init__(self, root: Path, dataset: str, split: str, captions: list[str], ids: list[str] | None,
                 images_path: Path, global_path: Path | None, captions_per_image: int):
        self.root = Path(root)
        self.dataset = dataset
        self.split = split
        self.captions = captions
        self.ids = ids
        self.images_path = images_path
        self.global_path = global_path
        self.captions_per_image = captions_per_image
        self._images = None
        self._global = None

    # lazily (re)opened mappings -------------------------------------------------------------------
    @property
    def images(self) -> np.memmap:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    @property
    def global_feats(self) -> np.memmap | None:
        if self.global_path is None:
            return None
        if self._global is None:
            self._global = np.load(self.global_path, mmap_mode="r")
        return self._global

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = state["_global"] = None
        return state

    # sizes ----------------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.images_path.parent

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def n_regions(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_dim(self) -> int:
        return int(self.images.shape[2])

    @property
    def global_dim(self) -> int | None:
        g = self.global_feats
        return None if g is None else int(g.shape[1])

    def image_of(self, caption_index: int) -> int:
        """Index of the image that caption `caption_index` describes (SPEC §2.1: j // 5, or 1:1)."""
        if not 0 <= caption_index < self.n_captions:
            raise IndexError(f"caption index {caption_index} out of range for {self.n_captions} captions")
        return caption_index // self.captions_per_image

    # row access (copies, resident memory stays flat) -------------------------------------------------
    def read_regions(self, index) -> np.ndarray:
        """float32 copy of images[index] (int -> (R, D); slice / int array -> (n, R, D))."""
        return read_rows(self.images, index)

    def read_global(self, index) -> np.ndarray:
        if self.global_feats is None:
            raise DataError(f"{self.folder}/{self.split}_global.npy: no global features for this split")
        return read_rows(self.global_feats, index)

    # validation -----------------------------------------------------------------------------------
    def check_values(self, chunk: int = 1024, progress: bool = False, max_images: int | None = None) -> None:
        """Scan features for NaN/inf in chunks of `chunk` images; DataError naming file and first bad row."""
        arrays = [(self.images_path, self.images)]
        if self.global_path is not None:
            arrays.append((self.global_path, self.global_feats))
        n = self.n_images if max_images is None else min(max_images, self.n_images)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n * len(arrays), unit="img", desc=f"{self.dataset}/{self.split}", leave=False)
        try:
            for path, arr in arrays:
                for start in range(0, n, chunk):
                    stop = min(start + chunk, n)
                    _check_finite(path, read_rows(arr, slice(start, stop)), start)
                    if bar is not None:
                        bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()

    def __repr__(self) -> str:
        g = "" if self.global_path is None else f", global {self.global_dim}"
        return (f"PrecompSplit({self.dataset}/{self.split}: {self.n_images} images x {self.n_regions} x "
                f"{self.image_dim}, {self.n_captions} captions{g})")


def _check_finite(path: Path, block: np.ndarray, first_row: int) -> None:
    # Row sums are a cheap screen (NaN and inf propagate); a non-finite sum can also be an overflow of
    # huge finite values, so confirm with an element-wise test before complaining.
    with np.errstate(over="ignore", invalid="ignore"):
        sums = block.reshape(len(block), -1).sum(axis=1)
    for r in np.flatnonzero(~np.isfinite(sums)):
        row = block[r]
        if not np.isfinite(row).all():
            bad = "NaN" if np.isnan(row).any() else "inf"
            raise DataError(f"{path}: image row {first_row + int(r)} holds {bad}; expected finite float32 features")


def precomp_folder(root, dataset: str) -> Path:
    return Path(root) / f"{dataset}_precomp"


def list_splits(root, dataset: str) -> list[str]:
    """Splits present in a precomp folder (those with a {split}_ims.npy), in a conventional order."""
    folder = precomp_folder(root, dataset)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found; expected <root>/<dataset>_precomp/")
    found = sorted(p.name[: -len("_ims.npy")] for p in folder.glob("*_ims.npy"))
    order = {s: i for i, s in enumerate(["train", "dev", "test", "testall"])}
    return sorted(found, key=lambda s: (order.get(s, len(order)), s))


def open_split(root, dataset: str, split: str, require_global: bool = False) -> PrecompSplit:
    """Open and validate one split (cheap checks + a NaN/inf scan of the first few MB of features)."""
    folder = precomp_folder(root, dataset)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found; expected <root>/<dataset>_precomp/ "
                        f"(generate toy data with `itrbench toy`, or see README for real data)")
    ims_path = folder / f"{split}_ims.npy"
    caps_path = folder / f"{split}_caps.txt"
    ids_path = folder / f"{split}_ids.txt"
    glob_path = folder / f"{split}_global.npy"

    images = open_npy(ims_path, 3, "(n_images, n_regions, dim) region features")
    n_images = images.shape[0]

    captions = read_lines(caps_path, "captions")
    n_caps = len(captions)
    if n_caps == 5 * n_images:
        per_image = 5
    elif n_caps == n_images:
        per_image = 1
    else:
        raise DataError(f"{caps_path}: {n_caps} captions for {n_images} images; "
                        f"expected 5 per image ({5 * n_images})")

    ids = None
    if ids_path.exists():
        ids = read_lines(ids_path, "image ids")
        if len(ids) != n_images:
            raise DataError(f"{ids_path}: {len(ids)} ids for {n_images} images; expected one id per image")

    if glob_path.exists():
        gfeats = open_npy(glob_path, 2, "(n_images, dim) global features")
        if gfeats.shape[0] != n_images:
            raise DataError(f"{glob_path}: {gfeats.shape[0]} rows for {n_images} images in {ims_path.name}; "
                            f"expected one global feature per image")
        del gfeats
    elif require_global:
        raise DataError(f"{glob_path}: file not found; this method needs global image features "
                        f"(n_images, dim) float32, produced by the feature-extraction stage")
    else:
        glob_path = None

    split_obj = PrecompSplit(folder.parent, dataset, split, captions, ids, ims_path, glob_path, per_image)
    split_obj._images = images
    row_bytes = max(1, images.strides[0])
    split_obj.check_values(chunk=256, max_images=max(1, _OPEN_CHECK_BYTES // row_bytes))
    return split_obj
