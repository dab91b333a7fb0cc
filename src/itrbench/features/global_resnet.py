"""ResNet-152 global image features (AsCL's G, SPEC §2.1): `{split}_global.npy`, float32 (n_images, 2048).

The network is transformers' `ResNetModel` (torchvision cannot be installed on the CPU-only machines this
project targets). Weights come only from local disk: a folder written by `save_pretrained`, a hub id already
in the Hugging Face cache, or a single state-dict file in transformers or torchvision/timm naming. Nothing is
ever downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from itrbench.errors import ConfigError, DataError
from itrbench.features.bua_tsv import read_ids
from itrbench.utils import atomic_path, resolve_device

__all__ = [
    "RESNET152_DEPTHS",
    "resnet_config",
    "load_resnet",
    "preprocess_image",
    "resolve_image_paths",
    "extract_global_features",
    "read_ids",
]

RESNET152_DEPTHS = (3, 8, 36, 3)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE, CROP = 256, 224


def resnet_config(depths=RESNET152_DEPTHS):
    """Bottleneck ResNet config; the default depths are ResNet-152. Smaller depths keep tests fast while the
    output width stays 2048."""
    from transformers import ResNetConfig

    return ResNetConfig(
        depths=list(depths),
        hidden_sizes=[256, 512, 1024, 2048],
        embedding_size=64,
        layer_type="bottleneck",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,  # stride on the 3x3 conv, as torchvision/timm ("ResNet v1.5")
    )


def preprocess_image(image: Image.Image) -> np.ndarray:
    """Standard ImageNet evaluation transform -> float32 (3, 224, 224).

    Shorter side to 256 (bicubic, the resampling of microsoft/resnet-152's own processor, whose crop_pct
    0.875 at 224 is this same 256 -> 224), centre crop 224, scale to [0, 1], ImageNet mean/std. Done with
    PIL + numpy because transformers' default image processors now expect torchvision.
    """
    image = image.convert("RGB")  # COCO holds greyscale and CMYK JPEGs
    w, h = image.size
    if w <= h:
        size = (RESIZE, max(RESIZE, int(RESIZE * h / w)))
    else:
        size = (max(RESIZE, int(RESIZE * w / h)), RESIZE)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BICUBIC)
    left = int(round((size[0] - CROP) / 2.0))
    top = int(round((size[1] - CROP) / 2.0))
    image = image.crop((left, top, left + CROP, top + CROP))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------------- weights

_TV_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(.+)$")
_HF_BLOCK = re.compile(r"^encoder\.stages\.(\d)\.layers\.(\d+)\.")


def _torchvision_to_hf(key: str) -> str | None:
    """Map a torchvision/timm ResNet key to the transformers `ResNetModel` key (None = not part of the trunk)."""
    m = _TV_STEM.match(key)
    if m:
        part = "convolution" if m.group(1) == "conv1" else "normalization"
        return f"embedder.embedder.{part}.{m.group(2)}"
    m = _TV_BLOCK.match(key)
    if m:
        stage, layer, module, rest = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(4)
        prefix = f"encoder.stages.{stage}.layers.{layer}"
        if module.startswith("downsample"):
            part = "convolution" if module.endswith("0") else "normalization"
            return f"{prefix}.shortcut.{part}.{rest}"
        part = "convolution" if module.startswith("conv") else "normalization"
        return f"{prefix}.layer.{int(module[-1]) - 1}.{part}.{rest}"
    return key if key.startswith(("embedder.", "encoder.")) else None


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickled module, unknown format
        raise DataError(f"{path}: cannot read ResNet weights ({type(err).__name__}); expected a state dict "
                        "(.safetensors, .pth, .pt or .bin)") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: expected a ResNet state dict (name -> tensor)")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("resnet.")  # DDP wrapper / ResNetForImageClassification
        hf_key = _torchvision_to_hf(key)
        if hf_key is not None:
            out[hf_key] = value
    return out


def _depths_of(state: dict, path: Path) -> tuple[int, ...]:
    layers: dict[int, int] = {}
    for key in state:
        m = _HF_BLOCK.match(key)
        if m:
            stage, layer = int(m.group(1)), int(m.group(2))
            layers[stage] = max(layers.get(stage, 0), layer + 1)
    if sorted(layers) != [0, 1, 2, 3]:
        raise DataError(f"{path}: no 4-stage ResNet trunk found in the weights (keys like layer1.0.conv1.weight "
                        "or encoder.stages.0.layers.0...)")
    return tuple(layers[s] for s in range(4))


def load_resnet(weights: str | None, *, random_init: bool = False, depths=RESNET152_DEPTHS, seed: int = 0):
    """Return `(model, preprocess)`: an eval-mode `ResNetModel` on CPU and `preprocess_image`.

    `weights`: a folder from `save_pretrained`, a hub id present in the local HF cache (e.g.
    `microsoft/resnet-152`, loaded with `local_files_only=True`), or a state-dict file in transformers or
    torchvision/timm naming (classifier weights are ignored; the depth is read from the file).
    `random_init=True` with `weights=None` builds a randomly initialised ResNet of `depths` (default
    ResNet-152) from `seed`: for tests and smoke runs only, its features are meaningless.
    """
    from transformers import ResNetModel

    if random_init:
        if weights is not None:
            raise ConfigError("give either ResNet weights or random_init, not both")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResNetModel(resnet_config(depths))
        return model.eval(), preprocess_image
    if not weights:
        raise ConfigError("no ResNet-152 weights: pass a local folder, a hub id already in the Hugging Face cache "
                          "(e.g. microsoft/resnet-152) or a state-dict file; use random_init only for tests")
    path = Path(weights).expanduser()
    if path.is_file():
        state = _read_state_dict(path)
        model = ResNetModel(resnet_config(_depths_of(state, path)))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            miss, unex = result.missing_keys, result.unexpected_keys
            raise DataError(f"{path}: weights do not fit a bottleneck ResNet ({len(miss)} missing keys"
                            f"{', e.g. ' + miss[0] if miss else ''}; {len(unex)} unexpected"
                            f"{', e.g. ' + unex[0] if unex else ''})")
        return model.eval(), preprocess_image
    try:
        model = ResNetModel.from_pretrained(str(path) if path.is_dir() else weights, local_files_only=True)
    except (OSError, ValueError) as err:
        if path.is_dir():  # e.g. a folder without config.json: transformers' own first line says what is missing
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{path}: cannot load a ResNet model folder: {first}") from None
        raise ConfigError(f"ResNet weights {weights!r}: not a file, a model folder, or a hub id in the local "
                          "Hugging Face cache (nothing is downloaded; check HF_HOME)") from None
    return model.eval(), preprocess_image


# ----------------------------------------------------------------------------------------------- images


def _format_pattern(pattern: str, image_id: str) -> str:
    # "{id}.jpg" keeps the id as written; "{id:012d}" (COCO file names) needs it as an integer.
    try:
        return pattern.format(id=image_id)
    except ValueError:
        if image_id.isdigit():
            return pattern.format(id=int(image_id))
        raise


def resolve_image_paths(ids: list[str], images_dir, patterns) -> list[Path]:
    """Image file of each id: the first of `patterns` (e.g. `"{id}.jpg"`, or for COCO's Karpathy split, whose
    images lie in two folders, `"val2014/COCO_val2014_{id:012d}.jpg"` then `"train2014/COCO_train2014_{id:012d}.jpg"`)
    that names an existing file under `images_dir`. Any id without a file -> DataError naming it."""
    images_dir = Path(images_dir)
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise ConfigError("no image filename pattern given; expected e.g. '{id}.jpg'")
    for p in patterns:
        try:
            distinct = _format_pattern(p, "1") != _format_pattern(p, "2")
        except (KeyError, IndexError, ValueError):
            distinct = False
        if not distinct:  # a pattern without {id} would map every image to one file
            raise ConfigError(f"image filename pattern {p!r} is invalid; expected a format string with an "
                              "{id} field, e.g. '{id}.jpg' or 'COCO_val2014_{id:012d}.jpg'")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    paths, missing = [], []
    for image_id in ids:
        candidates = [images_dir / _format_pattern(p, str(image_id).strip()) for p in patterns]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(candidates[0])
        paths.append(found)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: image file not found{more}; check --images and --pattern")
    return paths


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes and preprocesses one image; failures are returned, not raised, so that a DataLoader worker
    does not wrap them in a multi-line traceback and the main process can raise one clear DataError."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = [Path(p) for p in paths], preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as image:
                return i, torch.from_numpy(self.preprocess(image)), None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items):
    return items


@torch.inference_mode()
def extract_global_features(
    image_paths: list,
    out_path,
    model,
    *,
    batch_size: int = 32,
    device="cpu",
    preprocess=preprocess_image,
    num_workers: int = 0,
    progress: bool = True,
) -> None:
    """Write `out_path` = float32 (len(image_paths), C) pooled features (C = 2048 for ResNet-152), row i from
    image_paths[i]. Images are decoded on `num_workers` DataLoader workers; the model runs in float32 (the
    features are stored, not trained through). A missing or unreadable image raises DataError naming it, and
    no output is left behind."""
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise DataError(f"no images to extract features for {out_path}")
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image file not found")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    model = model.to(device).eval()
    width = int(model.config.hidden_sizes[-1])
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocess), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
    )
    with atomic_path(out_path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(paths), width))
        with tqdm(total=len(paths), desc=f"ResNet -> {Path(out_path).name}", unit="img", disable=not progress) as bar:
            for items in loader:
                for i, _, err in items:
                    if err is not None:
                        raise DataError(f"{paths[i]}: cannot read image ({err})")
                rows = [i for i, _, _ in items]
                pixels = torch.stack([x for _, x, _ in items]).to(device, non_blocking=True)
                pooled = model(pixel_values=pixels).pooler_output.flatten(1)
                out[rows[0] : rows[-1] + 1] = pooled.float().cpu().numpy()
                bar.update(len(rows))
        out.flush()
        del out
