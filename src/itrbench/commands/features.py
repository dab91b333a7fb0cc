"""Real-data feature extraction: `itrbench global-features` (ResNet-152 -> `{split}_global.npy`) and
`itrbench tsv-to-precomp` (bottom-up-attention TSV -> `{split}_ims.npy`). See docs/features.md."""
from __future__ import annotations

import argparse

from itrbench.errors import ConfigError


def _depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(x) for x in text.split(","))
    except ValueError:
        depths = ()
    if len(depths) != 4 or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers like 3,8,36,3; got {text!r}")
    return depths


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "global-features",
        help="ResNet-152 pooled features of raw images -> {split}_global.npy",
        description="Compute AsCL's global image features (ResNet-152 pooled, 2048-d) for the images of one split, "
                    "in the order of its ids file. Weights are read from local disk only.",
    )
    p.add_argument("--images", required=True, help="folder holding the raw images")
    p.add_argument("--ids", required=True, help="{split}_ids.txt: one image id per line, in feature-row order")
    p.add_argument("--pattern", action="append", default=None,
                   help="image file name under --images, a format string of {id} (default '{id}.jpg'); "
                        "repeat to try several, e.g. 'val2014/COCO_val2014_{id:012d}.jpg'")
    p.add_argument("--out", required=True, help="output .npy, conventionally <root>/<dataset>_precomp/{split}_global.npy")
    p.add_argument("--weights", default=None,
                   help="model folder, hub id already in the local Hugging Face cache (e.g. microsoft/resnet-152), "
                        "or a state-dict file (.safetensors/.pth, transformers or torchvision naming)")
    p.add_argument("--random-init", action="store_true", help="random weights: smoke tests only, features are meaningless")
    p.add_argument("--depths", type=_depths, default=None,
                   help="stage depths with --random-init (default 3,8,36,3 = ResNet-152)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:k]")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    p.set_defaults(func=run_global_features)

    q = subparsers.add_parser(
        "tsv-to-precomp",
        help="bottom-up-attention TSV -> precomp {split}_ims.npy",
        description="Convert Anderson et al.'s generate_tsv.py output into the SCAN/VSE∞ precomp region-feature "
                    "array, rows in the order of an ids file (streamed; never held in RAM).",
    )
    q.add_argument("--tsv", nargs="+", required=True, help="TSV file(s), read in order")
    q.add_argument("--ids", required=True, help="{split}_ids.txt: the images of the split, in output-row order")
    q.add_argument("--out", required=True, help="output .npy, conventionally <root>/<dataset>_precomp/{split}_ims.npy")
    q.add_argument("--boxes", type=int, default=36, help="regions per image every row must have (default 36)")
    q.add_argument("--dim", type=int, default=2048, help="feature width per region (default 2048)")
    q.add_argument("--ids-out", default=None, help="also write the ids, one image per line (e.g. {split}_ids.txt)")
    q.set_defaults(func=run_tsv_to_precomp)


def run_global_features(args) -> int:
    from itrbench.features.global_resnet import (
        RESNET152_DEPTHS, extract_global_features, load_resnet, read_ids, resolve_image_paths,
    )

    if args.depths is not None and not args.random_init:
        raise ConfigError("--depths only applies with --random-init (pretrained weights carry their own depth)")
    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    ids = read_ids(args.ids)
    paths = resolve_image_paths(ids, args.images, args.pattern or ["{id}.jpg"])
    model, preprocess = load_resnet(args.weights, random_init=args.random_init,
                                    depths=args.depths or RESNET152_DEPTHS, seed=args.seed)
    extract_global_features(paths, args.out, model, batch_size=args.batch_size, device=args.device,
                            preprocess=preprocess, num_workers=args.workers)
    return 0


def run_tsv_to_precomp(args) -> int:
    from itrbench.features.bua_tsv import convert_tsv_to_precomp, read_ids

    if args.boxes < 1 or args.dim < 1:
        raise ConfigError("--boxes and --dim must be positive")
    convert_tsv_to_precomp(args.tsv, read_ids(args.ids), args.out, num_boxes=args.boxes, dim=args.dim,
                           ids_out=args.ids_out)
    return 0
