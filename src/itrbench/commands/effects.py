"""`itrbench effects --metrics M... --pair BASE=VARIANT ... --protocol P`: paired per-seed ablation effects."""
from __future__ import annotations


def run(args) -> int:
    from itrbench.errors import ConfigError
    from itrbench.report.effects import paired_effects
    from itrbench.report.tables import load_records

    pairs = []
    for p in args.pair:
        if "=" not in p:
            raise ConfigError(f"--pair {p}: expected BASE_EXPERIMENT=VARIANT_EXPERIMENT")
        pairs.append(tuple(p.split("=", 1)))
    table = paired_effects(load_records(args.metrics), pairs, args.protocol, args.metric, args.dataset)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("effects", help="per-seed paired differences between experiments (ablation effect vs noise)")
    p.add_argument("--metrics", nargs="+", required=True, help="experiment records (results/.../seed*/metrics.json)")
    p.add_argument("--pair", action="append", required=True, metavar="BASE=VARIANT", help="two experiment names; repeat for more pairs")
    p.add_argument("--protocol", required=True, help="f30k_1k, coco_1k or coco_5k")
    p.add_argument("--metric", default="rsum", choices=["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"],
                   help="metric whose per-seed difference is reported (default: %(default)s)")
    p.add_argument("--dataset", default=None, help="data set key (f30k, coco) when both have the protocol")
    p.set_defaults(func=run)
