"""Real-data feature extraction: ResNet global features and the bottom-up-attention TSV converter."""
from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from itrbench.cli import main  # noqa: E402
from itrbench.errors import ConfigError, DataError  # noqa: E402
from itrbench.features.bua_tsv import convert_tsv_to_precomp, normalise_id, read_ids  # noqa: E402
from itrbench.features.global_resnet import (  # noqa: E402
    extract_global_features,
    load_resnet,
    preprocess_image,
    resnet_config,
    resolve_image_paths,
)

SMALL = (1, 1, 1, 1)  # full widths (2048-d output) but one block per stage: fast on CPU
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def leftovers(folder: Path, name: str) -> list[str]:
    """Files a failed write may have left: the output itself or an atomic_path temp (".<name>.*")."""
    return [p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def small_model():
    model, _ = load_resnet(None, random_init=True, depths=SMALL, seed=0)
    return model


@pytest.fixture
def images(tmp_path):
    """Four images of different sizes, modes and formats, named like Flickr30K files (`<id>.jpg|png`)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    specs = [("101", (300, 200), "RGB", "jpg"), ("102", (180, 320), "RGB", "png"),
             ("103", (256, 256), "L", "jpg"), ("104", (640, 480), "RGBA", "png")]
    paths = []
    for name, (w, h), mode, ext in specs:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()
        path = folder / f"{name}.{ext}"
        Image.fromarray(arr, mode).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ preprocessing


def test_preprocess_constant_colour_is_imagenet_normalised():
    x = preprocess_image(Image.new("RGB", (333, 250), (200, 100, 50)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = (np.array([200, 100, 50]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(x[:, 0, 0], expected, atol=1e-5)
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=1e-5)


def test_preprocess_centre_crop_geometry():
    # 512 x 256: shorter side already 256 (no resize); the 224 crop spans columns 144..367, so the
    # red/blue boundary at column 256 lands at crop column 112.
    arr = np.zeros((256, 512, 3), dtype=np.uint8)
    arr[:, :256, 0] = 255
    arr[:, 256:, 2] = 255
    x = preprocess_image(Image.fromarray(arr))
    red = (1.0 - MEAN[0]) / STD[0]
    assert np.allclose(x[0, :, :112], red, atol=1e-5)
    assert np.allclose(x[0, :, 112:], -MEAN[0] / STD[0], atol=1e-5)
    # a portrait image is resized so its width becomes 256 before cropping
    tall = preprocess_image(Image.new("RGB", (100, 300), (0, 255, 0)))
    assert tall.shape == (3, 224, 224)


# ------------------------------------------------------------------------------------------ global features


def test_default_config_is_resnet152():
    cfg = resnet_config()
    assert list(cfg.depths) == [3, 8, 36, 3]
    assert list(cfg.hidden_sizes) == [256, 512, 1024, 2048]
    assert cfg.layer_type == "bottleneck"


def test_global_features_shape_and_equal_to_direct_forward(tmp_path, images, small_model):
    out = tmp_path / "test_global.npy"
    extract_global_features(images, out, small_model, batch_size=3, progress=False)  # 3 + 1: a partial batch
    feats = np.load(out)
    assert feats.shape == (4, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0
    # each row is the pooled output of its own image, computed one image at a time
    for i, path in enumerate(images):
        with Image.open(path) as im:
            x = torch.from_numpy(preprocess_image(im))[None]
        with torch.inference_mode():
            ref = small_model(pixel_values=x).pooler_output.flatten(1)[0].numpy()
        np.testing.assert_allclose(feats[i], ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])


def test_random_init_is_deterministic_under_seed(tmp_path, images):
    a, b, c = (tmp_path / f"{k}.npy" for k in "abc")
    for path, seed in ((a, 0), (b, 0), (c, 1)):
        model, _ = load_resnet(None, random_init=True, depths=SMALL, seed=seed)
        extract_global_features(images[:1], path, model, progress=False)
    np.testing.assert_array_equal(np.load(a), np.load(b))
    assert not np.allclose(np.load(a), np.load(c))


def test_missing_and_unreadable_images_error_without_output(tmp_path, images, small_model):
    out = tmp_path / "g.npy"
    gone = tmp_path / "images" / "999.jpg"
    with pytest.raises(DataError, match="999.jpg") as err:
        extract_global_features([*images, gone], out, small_model, progress=False)
    assert "\n" not in str(err.value)
    broken = tmp_path / "images" / "105.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="105.jpg") as err:
        extract_global_features([broken, *images], out, small_model, batch_size=2, progress=False)
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path, "g.npy") == []


def test_resolve_image_paths_patterns(tmp_path):
    (tmp_path / "val2014").mkdir()
    (tmp_path / "train2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_000000391895.jpg").touch()
    (tmp_path / "train2014" / "COCO_train2014_000000000009.jpg").touch()
    patterns = ["val2014/COCO_val2014_{id:012d}.jpg", "train2014/COCO_train2014_{id:012d}.jpg"]
    got = resolve_image_paths(["391895", "9"], tmp_path, patterns)
    assert got == [tmp_path / "val2014" / "COCO_val2014_000000391895.jpg",
                   tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"]
    with pytest.raises(DataError, match="COCO_val2014_000000000042.jpg"):
        resolve_image_paths(["391895", "42"], tmp_path, patterns)
    with pytest.raises(ConfigError, match="pattern"):
        resolve_image_paths(["9"], tmp_path, ["image.jpg"])  # no {id}: every image would be one file


def test_load_from_saved_folder_and_missing_hub_id(tmp_path, small_model):
    small_model.save_pretrained(tmp_path / "resnet")
    model, _ = load_resnet(str(tmp_path / "resnet"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(pixel_values=x).pooler_output, small_model(pixel_values=x).pooler_output)
    with pytest.raises(ConfigError, match="local Hugging Face cache"):
        load_resnet("itrbench-test/no-such-resnet")
    with pytest.raises(ConfigError):
        load_resnet(None)


def _reference_torchvision_resnet(state: dict, x: torch.Tensor, depths) -> torch.Tensor:
    """Plain functional ResNet (torchvision's bottleneck layout, stride on the 3x3 conv) on a torchvision
    state dict: an independent check of the key conversion and of the architecture match."""

    def bn(h, p):
        return F.batch_norm(h, state[f"{p}.running_mean"], state[f"{p}.running_var"],
                            state[f"{p}.weight"], state[f"{p}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for s, depth in enumerate(depths, 1):
        for b in range(depth):
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            y = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            y = F.relu(bn(F.conv2d(y, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            y = bn(F.conv2d(y, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                h = bn(F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(y + h)
    return h.mean(dim=(2, 3))


def test_torchvision_state_dict_file_matches_reference(tmp_path):
    depths = (1, 2, 1, 1)
    gen = torch.Generator().manual_seed(0)
    template, _ = load_resnet(None, random_init=True, depths=depths)
    # build a torchvision-named state dict with random values (incl. non-trivial BN statistics)
    state = {}
    for key, value in template.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        tv = key.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
        if key.startswith("encoder."):
            _, _, s, _, b, rest = key.split(".", 5)
            block = f"layer{int(s) + 1}.{b}"
            if rest.startswith("shortcut."):
                tv = f"{block}.downsample.{0 if 'convolution' in rest else 1}.{rest.split('.')[-1]}"
            else:
                k, part, leaf = rest.split(".")[1:]
                tv = f"{block}.{'conv' if part == 'convolution' else 'bn'}{int(k) + 1}.{leaf}"
        if key.endswith("running_var"):
            state[tv] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[tv] = torch.randn(value.shape, generator=gen) * (0.05 if value.dim() == 4 else 0.5)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # classifier: ignored
    torch.save(state, tmp_path / "resnet_tv.pth")

    model, _ = load_resnet(str(tmp_path / "resnet_tv.pth"))
    assert list(model.config.depths) == list(depths)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.inference_mode():
        got = model(pixel_values=x).pooler_output.flatten(1)
    torch.testing.assert_close(got, _reference_torchvision_resnet(state, x, depths), rtol=1e-4, atol=1e-4)

    del state["layer2.1.conv2.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(DataError, match="broken.pth.*missing"):
        load_resnet(str(tmp_path / "broken.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.pth"):
        load_resnet(str(tmp_path / "junk.pth"))


# ------------------------------------------------------------------------------------------ TSV converter


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).decode("ascii")


def write_tsv(path: Path, rows) -> None:
    """rows: (image_id, features (n, dim)) -> a generate_tsv.py-style file (no header)."""
    lines = []
    for image_id, feats in rows:
        n = feats.shape[0]
        boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (n, 1))
        lines.append("\t".join([str(image_id), "640", "480", str(n), _b64(boxes), _b64(feats)]))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def tsv_data(tmp_path):
    rng = np.random.default_rng(1)
    feats = {i: rng.standard_normal((36, 2048)).astype(np.float32) for i in (391895, 522418, 184613, 318219)}
    # two files, as in the COCO release; 318219 belongs to another split and must be skipped
    write_tsv(tmp_path / "a.tsv", [(391895, feats[391895]), (318219, feats[318219])])
    write_tsv(tmp_path / "b.tsv", [(522418, feats[522418]), (184613, feats[184613])])
    return feats, [tmp_path / "a.tsv", tmp_path / "b.tsv"]


def test_tsv_to_precomp_matches_source_in_ids_order(tmp_path, tsv_data):
    feats, tsvs = tsv_data
    ids = ["184613", "391895", "522418"]
    out = tmp_path / "test_ims.npy"
    convert_tsv_to_precomp(tsvs, ids, out, ids_out=tmp_path / "test_ids.txt", progress=False)
    got = np.load(out, mmap_mode="r")
    assert got.shape == (3, 36, 2048) and got.dtype == np.float32
    for row, image_id in enumerate(ids):
        np.testing.assert_array_equal(got[row], feats[int(image_id)])
    assert (tmp_path / "test_ids.txt").read_text().split() == ids


def test_tsv_wrong_box_count_errors_one_line(tmp_path, tsv_data):
    feats, tsvs = tsv_data
    write_tsv(tmp_path / "c.tsv", [(7, feats[391895][:10])])
    with pytest.raises(DataError) as err:
        convert_tsv_to_precomp([tmp_path / "c.tsv"], ["7"], tmp_path / "x_ims.npy", progress=False)
    msg = str(err.value)
    assert "c.tsv" in msg and "'7'" in msg and "10 boxes" in msg and "36" in msg and "\n" not in msg
    assert leftovers(tmp_path, "x_ims.npy") == []


def test_tsv_missing_id_errors_one_line(tmp_path, tsv_data):
    _, tsvs = tsv_data
    with pytest.raises(DataError) as err:
        convert_tsv_to_precomp(tsvs, ["391895", "555"], tmp_path / "x_ims.npy", ids_out=tmp_path / "x_ids.txt",
                               progress=False)
    assert "'555'" in str(err.value) and "not found" in str(err.value) and "\n" not in str(err.value)
    assert leftovers(tmp_path, "x_ims.npy") == [] and leftovers(tmp_path, "x_ids.txt") == []


def test_tsv_bad_base64_and_py3_bytes_spelling(tmp_path, tsv_data):
    feats, _ = tsv_data
    good = "\t".join(["5", "1", "1", "36", _b64(np.zeros((36, 4))), _b64(feats[391895])])
    (tmp_path / "bad.tsv").write_text(good.rsplit("\t", 1)[0] + "\t@@not base64@@\n")
    with pytest.raises(DataError, match=r"bad\.tsv.*'5'.*base64"):
        convert_tsv_to_precomp(tmp_path / "bad.tsv", ["5"], tmp_path / "y.npy", progress=False)
    assert leftovers(tmp_path, "y.npy") == []
    # str(bytes) as written by careless Python-3 ports of generate_tsv.py
    (tmp_path / "py3.tsv").write_text(good.rsplit("\t", 1)[0] + f"\tb'{_b64(feats[391895])}'\n")
    convert_tsv_to_precomp(tmp_path / "py3.tsv", ["5"], tmp_path / "y.npy", progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy")[0], feats[391895])


def test_read_ids_normalisation_and_caption_level_files(tmp_path):
    assert normalise_id(" 000123 ") == "123" and normalise_id("1000092795.jpg") == "1000092795"
    (tmp_path / "img.txt").write_text("1000092795\n10002456\n\n")
    assert read_ids(tmp_path / "img.txt") == ["1000092795", "10002456"]
    (tmp_path / "cap.txt").write_text("".join(f"{i}\n" * 5 for i in (3, 1, 2)))
    assert read_ids(tmp_path / "cap.txt") == ["3", "1", "2"]
    (tmp_path / "dup.txt").write_text("3\n1\n3\n")
    with pytest.raises(DataError, match=r"dup\.txt.*duplicate.*line 3"):
        read_ids(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_ids(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------------------ CLI


def test_cli_both_commands(tmp_path, images, tsv_data, capsys):
    ids = tmp_path / "test_ids.txt"
    ids.write_text("102\n101\n")
    out = tmp_path / "precomp" / "test_global.npy"
    rc = main(["global-features", "--images", str(tmp_path / "images"), "--ids", str(ids),
               "--pattern", "{id}.jpg", "--pattern", "{id}.png", "--out", str(out),
               "--random-init", "--depths", "1,1,1,1", "--device", "cpu", "--batch-size", "2"])
    assert rc == 0
    feats = np.load(out)
    model, _ = load_resnet(None, random_init=True, depths=SMALL, seed=0)
    extract_global_features([images[1], images[0]], tmp_path / "direct.npy", model, progress=False)
    np.testing.assert_allclose(feats, np.load(tmp_path / "direct.npy"), rtol=1e-5, atol=1e-6)

    _, tsvs = tsv_data
    ids.write_text("522418\n391895\n")
    rc = main(["tsv-to-precomp", "--tsv", *map(str, tsvs), "--ids", str(ids),
               "--out", str(tmp_path / "precomp" / "test_ims.npy")])
    assert rc == 0 and np.load(tmp_path / "precomp" / "test_ims.npy", mmap_mode="r").shape == (2, 36, 2048)

    capsys.readouterr()
    rc = main(["tsv-to-precomp", "--tsv", *map(str, tsvs), "--ids", str(ids), "--boxes", "10",
               "--out", str(tmp_path / "precomp" / "dev_ims.npy")])
    last = capsys.readouterr().err.splitlines()[-1]  # earlier stderr lines are the progress bar
    assert rc == 2 and last.startswith("itrbench: error: ") and "a.tsv" in last and "expected 10" in last
    assert not os.path.exists(tmp_path / "precomp" / "dev_ims.npy")
    rc = main(["global-features", "--images", str(tmp_path / "images"), "--ids", str(ids),
               "--out", str(tmp_path / "precomp" / "x.npy"), "--random-init"])
    assert rc == 2 and "522418.jpg" in capsys.readouterr().err
