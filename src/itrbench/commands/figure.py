"""`itrbench figure NAME`: one figure (PNG, house style) from experiment records, stamped with its provenance."""
from __future__ import annotations


def run(args) -> int:
    import pandas as pd

    from itrbench.errors import ConfigError
    from itrbench.report.figures import figure_plotters, save_figure, stamp
    from itrbench.experiments.plan import load_registry
    from itrbench.report.tables import header_line, load_paper_numbers, load_records

    plotters = figure_plotters()
    if args.name not in plotters:
        raise ConfigError(f"figure '{args.name}': expected one of {', '.join(plotters)}")
    registry = load_registry(args.registry)
    paper = pd.concat([load_paper_numbers(p) for p in args.paper_numbers], ignore_index=True)
    records = load_records(args.metrics)
    members = [n for n, e in registry["experiments"].items() if args.name in e["figures"]]
    records = records[records["experiment"].isin(members)]
    fig = plotters[args.name](records, paper, registry)
    stamp(fig, header_line(args.config_name, args.scale, args.seeds, records["git_commit"].dropna().unique()))
    save_figure(fig, args.out)
    print(f"{args.name}: {records['record_dir'].nunique()} runs -> {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("figure", help="plot a paper figure (PNG) from experiment records")
    p.add_argument("name", help="figure name in the registry, e.g. coder_fig3_batch_size")
    p.add_argument("--registry", default="workflow/experiments.yaml",
                   help="experiment registry: which experiments each figure plots (default: %(default)s)")
    p.add_argument("--paper-numbers", nargs="+", required=True, help="paper-numbers CSV file(s) (workflow/paper/*.csv)")
    p.add_argument("--metrics", nargs="*", default=[], help="experiment records (metrics.json)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds the config runs, for the provenance line")
    p.add_argument("--config-name", default="default", help="workflow config name, for the provenance line")
    p.add_argument("--scale", default="toy", choices=["toy", "paper"], help="data scale, for the provenance line")
    p.add_argument("--out", required=True, help="output .png")
    p.set_defaults(func=run)
