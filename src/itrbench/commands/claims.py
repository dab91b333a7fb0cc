"""`itrbench claims`: every ablation claim of both papers with its toy effect, 95 % t-interval and verdict."""
from __future__ import annotations


def run(args) -> int:
    import pandas as pd

    from itrbench.report.claims import build_claims, load_claims, write_claims
    from itrbench.experiments.plan import load_registry
    from itrbench.report.tables import header_line, load_paper_numbers, load_records

    registry = load_registry(args.registry)
    paper = pd.concat([load_paper_numbers(p) for p in args.paper_numbers], ignore_index=True)
    claims = load_claims(args.claims, registry, paper)
    records = load_records(args.metrics)
    table = build_claims(claims, records, args.seeds)
    header = header_line(args.config_name, args.scale, args.seeds, records["git_commit"].dropna().unique())
    write_claims(table, args.md, args.csv, header)
    counts = table["verdict"].value_counts().to_dict()
    print(f"claims: {len(table)} ({', '.join(f'{v} {k}' for k, v in counts.items())}) -> {args.md}, {args.csv}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("claims", help="verdict per paper ablation claim (markdown + csv) from experiment records")
    p.add_argument("--claims", default="workflow/claims.yaml", help="claims file: claim text, contrast of experiments, paper effect")
    p.add_argument("--registry", default="workflow/experiments.yaml", help="experiment registry (tables, experiments)")
    p.add_argument("--paper-numbers", nargs="+", required=True, help="paper-numbers CSV file(s) (workflow/paper/*.csv)")
    p.add_argument("--metrics", nargs="*", default=[], help="experiment records (results/.../seed<k>/metrics.json)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the config (a claim uses those all its runs have)")
    p.add_argument("--config-name", default="default", help="workflow config name, for the header line")
    p.add_argument("--scale", default="toy", choices=["toy", "paper"], help="scale named in the header line")
    p.add_argument("--md", required=True, help="markdown output")
    p.add_argument("--csv", required=True, help="csv output (first line is the header comment)")
    p.set_defaults(func=run)
