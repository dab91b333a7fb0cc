"""Precomp reader: fixtures are written in the real layout with numpy; every bad input -> one DataError naming the file."""
import pickle
import sys

import numpy as np
import pytest

from itrbench.data import precomp
from itrbench.data.precomp import list_splits, open_split, read_rows
from itrbench.errors import DataError

DS = "fx"


def write_split(root, split="test", n=4, R=3, D=5, per_image=5, ids=True, global_dim=None, captions=None, ims=None):
    """Write one split in the SCAN/VSE∞ layout; image i's features are i + 0.01 * arange so rows are recognisable."""
    folder = root / f"{DS}_precomp"
    folder.mkdir(parents=True, exist_ok=True)
    if ims is None:
        ims = (np.arange(n, dtype=np.float32)[:, None, None] + 0.01 * np.arange(R * D, dtype=np.float32).reshape(1, R, D))
    np.save(folder / f"{split}_ims.npy", ims)
    if captions is None:
        captions = [f"caption {k} of image {i}" for i in range(n) for k in range(per_image)]
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    if ids:
        (folder / f"{split}_ids.txt").write_text("".join(f"{100 + i}\n" for i in range(n)))
    if global_dim:
        np.save(folder / f"{split}_global.npy", np.arange(n * global_dim, dtype=np.float32).reshape(n, global_dim))
    return folder


def test_reads_small_split(tmp_path):
    folder = write_split(tmp_path, n=4, R=3, D=5, global_dim=6)
    s = open_split(tmp_path, DS, "test")
    assert (s.n_images, s.n_captions, s.captions_per_image) == (4, 20, 5)
    assert (s.n_regions, s.image_dim, s.global_dim) == (3, 5, 6)
    assert isinstance(s.images, np.memmap)  # memory-mapped, not loaded
    assert s.captions[7] == "caption 2 of image 1"
    assert s.ids == ["100", "101", "102", "103"]
    assert [s.image_of(j) for j in (0, 4, 5, 19)] == [0, 0, 1, 3]
    np.testing.assert_array_equal(s.read_regions(2), np.load(folder / "test_ims.npy")[2])
    np.testing.assert_array_equal(s.read_regions([3, 1]), np.load(folder / "test_ims.npy")[[3, 1]])
    np.testing.assert_array_equal(s.read_global(slice(1, 3)), np.arange(24, dtype=np.float32).reshape(4, 6)[1:3])
    assert s.read_regions(1).dtype == np.float32
    with pytest.raises(IndexError):
        s.image_of(20)


def test_one_caption_per_image_and_no_ids(tmp_path):
    write_split(tmp_path, n=3, per_image=1, ids=False)
    s = open_split(tmp_path, DS, "test")
    assert s.captions_per_image == 1 and s.ids is None and s.global_feats is None
    assert s.image_of(2) == 2


def test_crlf_bom_and_trailing_blank_lines_are_tolerated(tmp_path):
    folder = write_split(tmp_path, n=1)
    (folder / "test_caps.txt").write_bytes("\ufeffa dog .\r\nb\r\nc\nd\ne\n\n\n".encode("utf-8"))
    assert open_split(tmp_path, DS, "test").captions == ["a dog .", "b", "c", "d", "e"]


def test_truncated_npy_names_file_and_sizes(tmp_path):
    folder = write_split(tmp_path, n=4, R=3, D=5)
    path = folder / "test_ims.npy"
    data = path.read_bytes()
    header = len(data) - 4 * 3 * 5 * 4
    path.write_bytes(data[:-7])
    with pytest.raises(DataError) as err:
        open_split(tmp_path, DS, "test")
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg
    assert f"{header + 240} bytes" in msg and f"{header + 233} bytes" in msg
    assert "\n" not in msg


def test_truncated_inside_header(tmp_path):
    folder = write_split(tmp_path)
    (folder / "test_ims.npy").write_bytes((folder / "test_ims.npy").read_bytes()[:20])
    with pytest.raises(DataError, match="test_ims.npy"):
        open_split(tmp_path, DS, "test")


def test_caption_count_mismatch(tmp_path):
    caps = [f"c{j}" for j in range(19)]  # image 3 has only 4 captions
    folder = write_split(tmp_path, n=4, captions=caps)
    with pytest.raises(DataError) as err:
        open_split(tmp_path, DS, "test")
    assert str(err.value) == f"{folder / 'test_caps.txt'}: 19 captions for 4 images; expected 5 per image (20)"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_fail_on_open(tmp_path, bad):
    ims = np.ones((4, 3, 5), np.float32)
    ims[2, 1, 3] = bad
    folder = write_split(tmp_path, ims=ims)
    with pytest.raises(DataError) as err:
        open_split(tmp_path, DS, "test")
    assert str(folder / "test_ims.npy") in str(err.value) and "image row 2" in str(err.value)


def test_nan_beyond_open_window_found_by_check_values(tmp_path, monkeypatch):
    ims = np.ones((50, 3, 5), np.float32)
    ims[41, 0, 0] = np.nan
    folder = write_split(tmp_path, n=50, ims=ims)
    monkeypatch.setattr(precomp, "_OPEN_CHECK_BYTES", 3 * 5 * 4 * 10)  # open scans 10 images only
    s = open_split(tmp_path, DS, "test")
    with pytest.raises(DataError, match=r"test_ims.npy: image row 41 holds NaN"):
        s.check_values(chunk=8)


def test_nan_in_global_features(tmp_path):
    folder = write_split(tmp_path, global_dim=4)
    g = np.zeros((4, 4), np.float32)
    g[3, 0] = np.nan
    np.save(folder / "test_global.npy", g)
    with pytest.raises(DataError, match="test_global.npy: image row 3"):
        open_split(tmp_path, DS, "test")


def test_huge_finite_values_are_not_flagged(tmp_path):
    ims = np.full((2, 3, 5), 3e37, np.float32)  # row sums overflow to inf; the values themselves are finite
    write_split(tmp_path, n=2, ims=ims)
    open_split(tmp_path, DS, "test").check_values()


def test_empty_caption_file(tmp_path):
    folder = write_split(tmp_path)
    (folder / "test_caps.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"test_caps.txt: file is empty"):
        open_split(tmp_path, DS, "test")
    (folder / "test_caps.txt").write_bytes(b"\n \n")
    with pytest.raises(DataError, match=r"test_caps.txt: file is empty"):
        open_split(tmp_path, DS, "test")


def test_empty_caption_line(tmp_path):
    caps = [f"c{j}" for j in range(20)]
    caps[6] = "  "
    write_split(tmp_path, captions=caps)
    with pytest.raises(DataError, match=r"test_caps.txt: line 7 is empty"):
        open_split(tmp_path, DS, "test")


def test_non_utf8_caption_file_names_line(tmp_path):
    folder = write_split(tmp_path)
    lines = [f"c{j}".encode() for j in range(20)]
    lines[12] = "caf\u00e9".encode("latin-1")
    (folder / "test_caps.txt").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as err:
        open_split(tmp_path, DS, "test")
    assert str(folder / "test_caps.txt") in str(err.value) and "line 13 is not valid UTF-8" in str(err.value)


@pytest.mark.parametrize("case, pattern", [
    ("missing_ims", r"test_ims.npy: file not found"),
    ("missing_caps", r"test_caps.txt: file not found"),
    ("float64", r"test_ims.npy: dtype float64; expected float32"),
    ("ndim2", r"test_ims.npy: shape \(4, 15\); expected 3 dimensions"),
    ("ids", r"test_ids.txt: 3 ids for 4 images"),
    ("global_rows", r"test_global.npy: 5 rows for 4 images"),
    ("global_ndim", r"test_global.npy: shape \(4,\); expected 2 dimensions"),
    ("not_npy", r"test_ims.npy: not a readable .npy file"),
])
def test_bad_files(tmp_path, case, pattern):
    folder = write_split(tmp_path, n=4, R=3, D=5)
    if case == "missing_ims":
        (folder / "test_ims.npy").unlink()
    elif case == "missing_caps":
        (folder / "test_caps.txt").unlink()
    elif case == "float64":
        np.save(folder / "test_ims.npy", np.zeros((4, 3, 5)))
    elif case == "ndim2":
        np.save(folder / "test_ims.npy", np.zeros((4, 15), np.float32))
    elif case == "ids":
        (folder / "test_ids.txt").write_text("1\n2\n3\n")
    elif case == "global_rows":
        np.save(folder / "test_global.npy", np.zeros((5, 2), np.float32))
    elif case == "global_ndim":
        np.save(folder / "test_global.npy", np.zeros(4, np.float32))
    elif case == "not_npy":
        (folder / "test_ims.npy").write_bytes(b"this is not numpy data at all")
    with pytest.raises(DataError, match=pattern):
        open_split(tmp_path, DS, "test")


def test_missing_folder_and_required_global(tmp_path):
    with pytest.raises(DataError, match=r"fx_precomp: data folder not found"):
        open_split(tmp_path, DS, "test")
    write_split(tmp_path)
    with pytest.raises(DataError, match=r"test_global.npy: file not found"):
        open_split(tmp_path, DS, "test", require_global=True)


def test_list_splits_order(tmp_path):
    for s in ("testall", "train", "dev", "extra"):
        write_split(tmp_path, split=s)
    assert list_splits(tmp_path, DS) == ["train", "dev", "testall", "extra"]


def test_pickle_does_not_copy_features(tmp_path):
    write_split(tmp_path, n=300, R=10, D=50)  # 600 KB of features
    s = open_split(tmp_path, DS, "test")
    blob = pickle.dumps(s)
    assert len(blob) < 100_000
    s2 = pickle.loads(blob)
    np.testing.assert_array_equal(s2.read_regions(299), s.read_regions(299))


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise RuntimeError("no RssFile")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_read_rows_keeps_resident_set_flat(tmp_path):
    path = tmp_path / "big.npy"
    data = np.random.default_rng(0).random((512, 64, 256), dtype=np.float32)  # 32 MiB
    np.save(path, data)
    del data
    arr = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    total = 0.0
    for i in np.random.default_rng(1).permutation(len(arr)):
        total += float(read_rows(arr, int(i))[0, 0])
    released = _rss_file_kib() - before
    # a view cannot use positional reads: it goes through the mapping and releases the pages afterwards
    view = arr[:]
    before = _rss_file_kib()
    for i in np.random.default_rng(2).permutation(len(view)):
        total += float(read_rows(view, int(i))[0, 0])
    released_view = _rss_file_kib() - before
    # control: the same reads without releasing map the whole file into the process
    arr2 = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    for i in range(len(arr2)):
        total += float(np.array(arr2[i])[0, 0])
    kept = _rss_file_kib() - before
    assert kept > 24 * 1024, kept
    assert released < 2 * 1024, released
    assert released_view < 4 * 1024, released_view
    # and the released pages read back the same
    np.testing.assert_array_equal(read_rows(arr, slice(5, 9)), np.asarray(arr2[5:9]))
    np.testing.assert_array_equal(read_rows(view, [7, 3, 4, 5, 100]), np.asarray(arr2[[7, 3, 4, 5, 100]]))
    np.testing.assert_array_equal(read_rows(arr, [7, 3, 4, 5, 100]), np.asarray(arr2[[7, 3, 4, 5, 100]]))
    np.testing.assert_array_equal(read_rows(arr, slice(10, 2, -3)), np.asarray(arr2[10:2:-3]))
    np.testing.assert_array_equal(read_rows(arr, -1), np.asarray(arr2[-1]))
    assert read_rows(arr, []).shape == (0, 64, 256)


def test_validate_data_cli(tmp_path, capsys):
    from itrbench.cli import main

    write_split(tmp_path, split="train", global_dim=3)
    write_split(tmp_path, split="test")
    assert main(["validate-data", "--root", str(tmp_path), "--dataset", DS, "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["fx/train: 4 images x 3 x 5, 20 captions (5 per image, ids, global 3): ok",
                   "fx/test: 4 images x 3 x 5, 20 captions (5 per image, ids): ok"]
    assert main(["validate-data", "--root", str(tmp_path), "--dataset", DS, "--splits", "test",
                 "--require-global", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("itrbench: error: ") and "test_global.npy" in err[0]
