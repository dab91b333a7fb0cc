"""`itrbench budget [DIR]`: core-seconds and peak memory per rule kind from Snakemake `benchmark:` files.

Every rule writes `results/benchmarks/<rule>/<job>.tsv` (Snakemake's columns: s, h:m:s, max_rss, ..., cpu_time);
a job that reruns overwrites its file, so the folder holds the latest execution of every job. Prints one line per
rule kind (jobs, summed wall and cpu seconds, largest max_rss) and, last, `core_seconds=X` (sum of cpu_time).
"""
from __future__ import annotations

import csv
from pathlib import Path


def read_benchmarks(root: Path) -> dict[str, list[dict]]:
    from itrbench.errors import DataError

    if not root.is_dir():
        raise DataError(f"{root}: no benchmark folder; run the pipeline first (every rule writes one there)")
    kinds: dict[str, list[dict]] = {}
    for path in sorted(root.rglob("*.tsv")):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or not {"s", "cpu_time", "max_rss"} <= set(rows[0]):
            raise DataError(f"{path}: expected a Snakemake benchmark file (columns s, max_rss, cpu_time)")
        row = rows[-1]  # `repeat(...)` benchmarks hold several rows; the last is the latest

        def num(key: str) -> float:
            value = row[key]
            try:
                return float(value)
            except ValueError:  # Snakemake writes "-" where it could not measure
                return 0.0
        kind = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else path.stem
        kinds.setdefault(kind, []).append({"wall": num("s"), "cpu": num("cpu_time"), "rss": num("max_rss")})
    if not kinds:
        raise DataError(f"{root}: no *.tsv benchmark files")
    return kinds


def summarise(kinds: dict[str, list[dict]]) -> tuple[list[dict], float]:
    rows = [{"rule": k, "jobs": len(v), "wall_s": sum(x["wall"] for x in v), "cpu_s": sum(x["cpu"] for x in v),
             "max_rss_mb": max(x["rss"] for x in v)} for k, v in kinds.items()]
    rows.sort(key=lambda r: -r["cpu_s"])
    return rows, sum(r["cpu_s"] for r in rows)


def run(args) -> int:
    rows, total = summarise(read_benchmarks(Path(args.dir)))
    print(f"{'rule':<24}{'jobs':>6}{'wall_s':>10}{'cpu_s':>10}{'share':>8}{'max_rss_mb':>12}")
    for r in rows:
        share = 100 * r["cpu_s"] / total if total else 0.0
        print(f"{r['rule']:<24}{r['jobs']:>6}{r['wall_s']:>10.1f}{r['cpu_s']:>10.1f}{share:>7.1f}%"
              f"{r['max_rss_mb']:>12.0f}")
    print(f"core_seconds={total:.1f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("budget", help="core-seconds and peak memory per rule kind from the benchmark files")
    p.add_argument("dir", nargs="?", default="results/benchmarks", help="benchmark folder (default %(default)s)")
    p.set_defaults(func=run)
