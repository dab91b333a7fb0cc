"""`itrbench validate-data`: check a precomp data set (files, shapes, counts, UTF-8, NaN/inf) split by split.

Which splits: `--splits`, else the splits a config names (`--config`: a run config's data.train_split and
eval_split, or every entry of a workflow config's `datasets` with this name), else every split present plus the
ones a run reads by default (train, and test — testall for COCO). A split that should be there and is not is an
error, never skipped.
"""
from __future__ import annotations


def default_eval_split(dataset: str) -> str:
    return "testall" if "coco" in dataset else "test"


def splits_of_config(path, dataset: str | None) -> tuple[list[str], str | None, str | None]:
    """(splits, root, dataset) named by a run config or a workflow config."""
    from itrbench.config import load_config, load_yaml
    from itrbench.errors import ConfigError

    raw = load_yaml(path)
    if isinstance(raw, dict) and "datasets" in raw:  # a workflow config
        entries = [e for e in (raw.get("datasets") or {}).values() if isinstance(e, dict)
                   and (dataset is None or e.get("name") == dataset)]
        if not entries:
            raise ConfigError(f"{path}: datasets: no entry with name '{dataset}'")
        splits = [s for e in entries for s in (e.get("train_split", "train"), e.get("eval_split", "test"))]
        return list(dict.fromkeys(splits)), entries[0].get("root"), entries[0].get("name")
    d = load_config(path)["data"]
    return list(dict.fromkeys((d["train_split"], d["eval_split"]))), d["root"], d["dataset"]


def run(args) -> int:
    from itrbench.data.precomp import list_splits, open_split
    from itrbench.errors import ConfigError

    root, dataset = args.root, args.dataset
    if args.splits:
        splits = args.splits
    elif args.config:
        splits, cfg_root, cfg_dataset = splits_of_config(args.config, dataset)
        root, dataset = root or cfg_root, dataset or cfg_dataset
    else:
        if not dataset:
            raise ConfigError("validate-data: --dataset is required without --config")
        splits = list(dict.fromkeys(["train", default_eval_split(dataset), *list_splits(root, dataset)]))
    if not root or not dataset:
        raise ConfigError("validate-data: --root and --dataset are required unless --config names them")
    for name in splits:
        split = open_split(root, dataset, name, require_global=args.require_global)
        split.check_values(chunk=args.chunk, progress=not args.quiet)
        extras = [f"{split.captions_per_image} per image"]
        if split.ids is not None:
            extras.append("ids")
        if split.global_dim is not None:
            extras.append(f"global {split.global_dim}")
        print(f"{dataset}/{name}: {split.n_images} images x {split.n_regions} x {split.image_dim}, "
              f"{split.n_captions} captions ({', '.join(extras)}): ok")
    return 0


def register(sub) -> None:
    p = sub.add_parser("validate-data", help="check a precomp data set (shapes, counts, UTF-8, NaN)")
    p.add_argument("--root", default=None, help="folder holding <dataset>_precomp/ (default: from --config)")
    p.add_argument("--dataset", default=None, help="f30k, coco, toy-f30k, toy-coco, ... (default: from --config)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="default: the splits --config names, else every split present plus train and test (COCO: testall)")
    p.add_argument("--config", default=None, help="run or workflow config whose train and eval splits must all be valid")
    p.add_argument("--require-global", action="store_true", help="fail when {split}_global.npy is missing")
    p.add_argument("--chunk", type=int, default=1024, help="images per NaN-scan chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
