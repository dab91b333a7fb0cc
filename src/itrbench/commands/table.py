"""`itrbench table NAME`: one paper table, paper-reported vs reproduced (mean ± std over seeds) vs difference."""
from __future__ import annotations


def parse_shared(items) -> dict:
    """`EXPERIMENT:DATASET=OTHER` arguments -> {(experiment, dataset key): other experiment}."""
    from itrbench.errors import ConfigError

    out = {}
    for item in items:
        left, sep, other = item.partition("=")
        exp, colon, ds = left.rpartition(":")
        if not (sep and colon and exp and ds and other):
            raise ConfigError(f"--shared {item}: expected EXPERIMENT:DATASET=OTHER_EXPERIMENT, e.g. <table row experiment>:f30k=<the experiment whose runs it shares>")
        out[(exp, ds)] = other
    return out


def run(args) -> int:
    import pandas as pd

    from itrbench.errors import ConfigError
    from itrbench.experiments.plan import load_registry
    from itrbench.report.tables import build_table, header_line, load_paper_numbers, load_records, write_table

    registry = load_registry(args.registry)
    if args.name not in registry["tables"]:
        raise ConfigError(f"{args.registry}: no table '{args.name}'; expected one of {', '.join(registry['tables'])}")
    shared = parse_shared(args.shared)
    paper = pd.concat([load_paper_numbers(p) for p in args.paper_numbers], ignore_index=True)
    records = load_records(args.metrics)
    table = build_table(args.name, registry, paper, records, args.seeds, shared=shared)
    header = header_line(args.config_name, args.scale, args.seeds, records["git_commit"].dropna().unique())
    # the Δ-to-paper line only at paper scale: toy numbers come from synthetic data
    write_table(table, args.md, args.csv, registry["tables"][args.name].get("title", args.name), header, args.html,
                show_delta=args.scale == "paper")
    counts = table["status"].value_counts().to_dict()
    outs = ", ".join(str(p) for p in (args.md, args.csv, args.html) if p)
    print(f"{args.name}: {len(table)} lines ({', '.join(f'{v} {k}' for k, v in counts.items())}) -> {outs}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("table", help="build a paper table (markdown + csv) from experiment records")
    p.add_argument("name", help="table name in the registry, e.g. coder_table2")
    p.add_argument("--registry", default="workflow/experiments.yaml",
                   help="experiment registry: which experiment reproduces which table row (default: %(default)s)")
    p.add_argument("--paper-numbers", nargs="+", required=True, help="paper-numbers CSV file(s) (workflow/paper/*.csv)")
    p.add_argument("--metrics", nargs="*", default=[],
                   help="experiment records results/<config>/<dataset>/<method>/<experiment>/seed<k>/metrics.json")
    p.add_argument("--shared", nargs="*", default=[], metavar="EXPERIMENT:DATASET=OTHER",
                   help="a row's experiment that was not run reads OTHER's records instead (same resolved config)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds the config runs (a row lists how many it has)")
    p.add_argument("--config-name", default="default", help="workflow config name, for the header line")
    p.add_argument("--scale", default="toy", choices=["toy", "paper"], help="data scale, for the header line")
    p.add_argument("--md", required=True, help="markdown output")
    p.add_argument("--csv", required=True, help="csv output (first line is the header comment)")
    p.add_argument("--html", default=None, help="optional HTML fragment output (the Snakemake report shows it inline)")
    p.set_defaults(func=run)
