"""`itrbench toy`: generate the ToyScenes data sets (SPEC §2.2) in the precomp layout."""
from __future__ import annotations

from pathlib import Path


def load_toy_config(path: str | None) -> dict:
    """Read a ToyScenes YAML: generator options at the top, optional per-dataset sections overriding them.

        region_noise: 0.8            # applies to every data set
        toy-f30k:                    # only for toy-f30k
          splits: {train: 80, dev: 10, test: 40}
    """
    import yaml

    from itrbench.data.toyscenes import DATASETS, OPTIONS, check_options
    from itrbench.errors import ConfigError

    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{p}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of ToyScenes options, got {type(data).__name__}")
    for key, value in data.items():
        if key in DATASETS:
            if not isinstance(value, dict):
                raise ConfigError(f"{p}: key '{key}' must be a mapping of options for that data set")
            for sub in value:
                if sub not in OPTIONS:
                    raise ConfigError(f"{p}: unknown key '{key}.{sub}'; expected one of {', '.join(OPTIONS)}")
        elif key not in OPTIONS:
            raise ConfigError(f"{p}: unknown key '{key}'; expected one of {', '.join(OPTIONS)} "
                              f"or a data set section ({', '.join(DATASETS)})")
    # validate every combination now, so a typo in one data set's section fails before anything is written
    common = {k: v for k, v in data.items() if k not in DATASETS}
    check_options(common, source=str(p))
    for name in DATASETS:
        if name in data:
            check_options({**common, **data[name]}, source=f"{p} ({name})")
    return data


def run(args) -> int:
    from itrbench.data.toyscenes import DATASETS, generate_toyscenes

    config = load_toy_config(args.config)
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    common = {k: v for k, v in config.items() if k not in DATASETS}
    for name in names:
        opts = {**common, **config.get(name, {})}
        if args.seed is not None:
            opts["seed"] = args.seed
        folder = generate_toyscenes(args.out, name, **opts)
        sizes = ", ".join(f"{s} {n}" for s, n in (opts.get("splits") or DATASETS[name]).items())
        print(f"wrote {folder} ({sizes} images)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("toy", help="generate the ToyScenes data sets (precomp layout)")
    p.add_argument("--out", required=True, help="root folder; writes <out>/<dataset>_precomp/")
    p.add_argument("--dataset", default="all", choices=["toy-f30k", "toy-coco", "all"], help="which data set to generate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed (default 0)")
    p.add_argument("--config", default=None, help="YAML of generator options (sizes, difficulty knobs)")
    p.set_defaults(func=run)
