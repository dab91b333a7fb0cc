"""`itrbench table NAME`: one paper table, paper-reported vs reproduced (mean ± std over seeds) vs difference."""
from __future__ import annotations


def run(args) -> int:
    import pandas as pd

    from itrbench.errors import ConfigError
    from itrbench.report.registry import load_registry
    from itrbench.report.tables import build_table, header_line, load_paper_numbers, load_records, write_table

    registry = load_registry(args.registry)
    if args.name not in registry["tables"]:
        raise ConfigError(f"{args.registry}: no table '{args.name}'; expected one of {', '.join(registry['tables'])}")
    paper = pd.concat([load_paper_numbers(p) for p in args.paper_numbers], ignore_index=True)
    records = load_records(args.metrics)
    table = build_table(args.name, registry, paper, records, args.seeds)
    header = header_line(args.config_name, args.scale, args.seeds, records["git_commit"].dropna().unique())
    write_table(table, args.md, args.csv, registry["tables"][args.name].get("title", args.name), header)
    counts = table["status"].value_counts().to_dict()
    print(f"{args.name}: {len(table)} lines ({', '.join(f'{v} {k}' for k, v in counts.items())}) -> {args.md}, {args.csv}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("table", help="build a paper table (markdown + csv) from experiment records")
    p.add_argument("name", help="table name in the registry, e.g. coder_table2")
    p.add_argument("--registry", default="workflow/experiments.yaml")
    p.add_argument("--paper-numbers", nargs="+", required=True, help="paper-numbers CSV file(s) (workflow/paper/*.csv)")
    p.add_argument("--metrics", nargs="*", default=[],
                   help="experiment records results/<dataset>/<method>/<experiment>/seed<k>/metrics.json")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds the config runs (a row lists how many it has)")
    p.add_argument("--config-name", default="default", help="workflow config name, for the header line")
    p.add_argument("--scale", default="toy", choices=["toy", "paper"])
    p.add_argument("--md", required=True, help="markdown output")
    p.add_argument("--csv", required=True, help="csv output (first line is the header comment)")
    p.set_defaults(func=run)
