"""`itrbench validate-data`: check a precomp data set (files, shapes, counts, UTF-8, NaN/inf) split by split."""
from __future__ import annotations


def run(args) -> int:
    from itrbench.data.precomp import list_splits, open_split

    splits = args.splits or list_splits(args.root, args.dataset)
    if not splits:
        from itrbench.data.precomp import precomp_folder
        from itrbench.errors import DataError

        raise DataError(f"{precomp_folder(args.root, args.dataset)}: no {{split}}_ims.npy files found")
    for name in splits:
        split = open_split(args.root, args.dataset, name, require_global=args.require_global)
        split.check_values(chunk=args.chunk, progress=not args.quiet)
        extras = [f"{split.captions_per_image} per image"]
        if split.ids is not None:
            extras.append("ids")
        if split.global_dim is not None:
            extras.append(f"global {split.global_dim}")
        print(f"{args.dataset}/{name}: {split.n_images} images x {split.n_regions} x {split.image_dim}, "
              f"{split.n_captions} captions ({', '.join(extras)}): ok")
    return 0


def register(sub) -> None:
    p = sub.add_parser("validate-data", help="check a precomp data set (shapes, counts, UTF-8, NaN)")
    p.add_argument("--root", required=True, help="folder holding <dataset>_precomp/")
    p.add_argument("--dataset", required=True, help="f30k, coco, toy-f30k, toy-coco, ...")
    p.add_argument("--splits", nargs="+", default=None, help="default: every split present")
    p.add_argument("--require-global", action="store_true", help="fail when {split}_global.npy is missing")
    p.add_argument("--chunk", type=int, default=1024, help="images per NaN-scan chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
