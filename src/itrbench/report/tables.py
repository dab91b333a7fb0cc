"""Paper tables: paper-reported numbers next to the suite's reproduction (mean ± std over seeds) and the difference.

Inputs are data only: `workflow/paper/<paper>.csv` (what the paper prints), the registry (which experiment
reproduces which row) and the experiments' `metrics.json` records. A reproduced cell is only ever computed from
metrics.json files; a row without runs says `not run`, a row of a method the suite does not implement says
`reported only`.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from itrbench.errors import DataError
from itrbench.experiments.plan import PROTOCOL_DATASET
from itrbench.utils import atomic_path, git_commit

RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
METRICS = [*RECALLS, "rsum"]
PAPER_COLUMNS = ["paper", "table", "row", "method", "protocol", *METRICS, "note"]
METRIC_LABELS = {
    "i2t_r1": "I→T R@1", "i2t_r5": "I→T R@5", "i2t_r10": "I→T R@10",
    "t2i_r1": "T→I R@1", "t2i_r5": "T→I R@5", "t2i_r10": "T→I R@10", "rsum": "R@sum",
}
PROTOCOL_LABELS = {"f30k_1k": "Flickr30K 1K", "coco_1k": "MSCOCO 1K (5-fold average)", "coco_5k": "MSCOCO 5K"}
NOT_RUN = "not run"
REPORTED_ONLY = "reported only"


# ---------------------------------------------------------------------------------------------- inputs
def load_paper_numbers(path: str | Path) -> pd.DataFrame:
    """Read a paper-numbers CSV and check it: the columns, protocols, value ranges, one line per (table, row, protocol)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: paper-numbers file not found")
    text_cols = {c: str for c in ("paper", "table", "row", "method", "protocol", "note")}
    try:
        df = pd.read_csv(path, dtype=text_cols, keep_default_na=False, na_values={m: [""] for m in METRICS})
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    if list(df.columns) != PAPER_COLUMNS:
        raise DataError(f"{path}: expected columns {','.join(PAPER_COLUMNS)}; got {','.join(map(str, df.columns))}")
    for i, rec in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        if rec.protocol not in PROTOCOL_DATASET:
            raise DataError(f"{path}:{i}: protocol must be one of {', '.join(PROTOCOL_DATASET)}, got {rec.protocol!r}")
        for m in METRICS:
            v = getattr(rec, m)
            top = 600.0 if m == "rsum" else 100.0
            if not (isinstance(v, float) and (math.isnan(v) or 0.0 <= v <= top)):
                raise DataError(f"{path}:{i}: {m} must be a number in [0, {top:g}] or empty, got {v!r}")
    dup = df.duplicated(["paper", "table", "row", "protocol"], keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0]) + 2
        raise DataError(f"{path}:{i}: duplicate (paper, table, row, protocol) {tuple(df.loc[i - 2, ['paper', 'table', 'row', 'protocol']])}")
    return df


def load_records(metrics_paths) -> pd.DataFrame:
    """One row per (experiment run, protocol) from experiment records (`metrics.json` + sibling run.json, config.yaml)."""
    rows = []
    for p in map(Path, metrics_paths):
        try:
            metrics = json.loads(p.read_text())
            run = json.loads((p.parent / "run.json").read_text())
            config = yaml.safe_load((p.parent / "config.yaml").read_text())
        except (OSError, json.JSONDecodeError, yaml.YAMLError) as err:
            raise DataError(f"{p}: unreadable experiment record ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        if not isinstance(metrics.get("protocols"), dict):
            raise DataError(f"{p}: expected a 'protocols' mapping in metrics.json")
        for protocol, values in metrics["protocols"].items():
            rows.append({
                "experiment": run["experiment"], "dataset_key": run["dataset_key"], "dataset": run["dataset"],
                "method": run["method"], "seed": int(run["seed"]), "config_hash": run["config_hash"],
                "run_dir": run["run_dir"], "record_dir": str(p.parent), "protocol": protocol,
                **{m: float(values[m]) if values.get(m) is not None else np.nan for m in METRICS},
                "pairs_per_second": metrics.get("pairs_per_second"),
                "similarity_seconds": metrics.get("similarity_seconds"),
                "train_wall_seconds": metrics.get("train_wall_seconds"),
                "git_commit": metrics.get("git_commit"),
                "converged": metrics.get("converged"),  # None: no dev split (itrbench.convergence)
                "config": config,
            })
    columns = ["experiment", "dataset_key", "dataset", "method", "seed", "config_hash", "run_dir", "record_dir",
               "protocol", *METRICS, "pairs_per_second", "similarity_seconds", "train_wall_seconds", "git_commit", "converged", "config"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------- building
def table_metrics(paper_rows: pd.DataFrame | None = None) -> list[str]:
    """The metric columns of a table: all six recalls and R@sum, so R@sum is always the sum of the columns shown
    (a paper table that prints only some recalls gets `–` in the others)."""
    return list(METRICS)


def paper_rsum(values: dict) -> tuple[float, bool]:
    """The paper's R@sum as printed, else the sum of its six recalls when all are given: (value, computed?)."""
    printed = values.get("rsum", np.nan)
    if not (isinstance(printed, float) and math.isnan(printed)):
        return float(printed), False
    recalls = [values.get(m, np.nan) for m in RECALLS]
    if all(isinstance(v, float) and not math.isnan(v) for v in recalls):
        return round(float(sum(recalls)), 1), True
    return np.nan, False


def build_table(table: str, registry: dict, paper: pd.DataFrame, records: pd.DataFrame, seeds,
                shared: dict | None = None) -> pd.DataFrame:
    """The wide table of one registry table: a line per (row, protocol) with paper / mean / std / diff per metric.

    `shared` maps (experiment, data set key) to another experiment whose run is the same (same config hash): a
    row whose own experiment was not selected by the config reads that run instead of `not run`.
    """
    spec = registry["tables"][table]
    rows = paper[(paper["paper"] == spec["paper"]) & (paper["table"] == spec["table"])]
    metrics = table_metrics(rows)
    reporter = {rep["row"]: name for name, exp in registry["experiments"].items()
                for rep in exp.get("reports", []) if rep["table"] == table}
    seeds = [int(s) for s in seeds]
    shared = shared or {}
    lines = []

    def runs_of(exp, protocol):
        if exp is None or not len(records):
            return pd.DataFrame(), ""
        ds = PROTOCOL_DATASET[protocol]
        for source in (exp, shared.get((exp, ds))):
            if source is None:
                continue
            got = records[(records["experiment"] == source) & (records["protocol"] == protocol)
                          & (records["dataset_key"] == ds) & records["seed"].isin(seeds)]
            if not got.empty:
                return got, source
        return pd.DataFrame(), ""

    def line(row, method, protocol, paper_values, note):
        exp = reporter.get(row)
        out = {"table": table, "protocol": protocol, "row": row, "method": method, "experiment": exp or ""}
        got, source = runs_of(exp, protocol)
        out["read_from"] = source
        out["dataset"] = str(got["dataset"].iloc[0]) if not got.empty else ""
        if exp is None:
            out["status"] = REPORTED_ONLY
        elif got.empty:
            out["status"] = NOT_RUN
        else:
            out["status"] = f"{got['seed'].nunique()}/{len(seeds)} seeds"
            unconverged = int((got.drop_duplicates("seed")["converged"] == False).sum())  # noqa: E712 (None = unknown)
            if unconverged:
                out["status"] += f", {unconverged} not converged"
        out["n_seeds"] = int(got["seed"].nunique()) if not got.empty else 0
        paper_values = {**paper_values}
        paper_values["rsum"], out["rsum_paper_computed"] = paper_rsum(paper_values)
        for m in metrics:
            p = paper_values.get(m, np.nan)
            vals = got[m].dropna().to_numpy(dtype=float) if not got.empty else np.array([])
            mean = float(vals.mean()) if len(vals) else np.nan
            out[f"{m}_paper"] = p
            out[f"{m}_mean"] = mean
            out[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else np.nan
            out[f"{m}_diff"] = mean - p if not (np.isnan(mean) or np.isnan(p)) else np.nan
        out["note"] = note
        lines.append(out)

    for rec in rows.itertuples(index=False):
        line(rec.row, rec.method, rec.protocol, {m: getattr(rec, m) for m in metrics}, rec.note)
    # Rows the suite adds to a paper table (registered but not printed by the paper): no paper numbers.
    printed = set(zip(rows["row"], rows["protocol"]))
    for row, exp in reporter.items():
        for protocol in dict.fromkeys(rows["protocol"]):
            if (row, protocol) not in printed and PROTOCOL_DATASET[protocol] in registry["experiments"][exp]["datasets"]:
                line(row, row, protocol, {}, registry["experiments"][exp].get("note") or "not in the paper's table")
    return pd.DataFrame(lines)


def header_line(config_name: str, scale: str, seeds, commits=()) -> str:
    """The provenance line on top of every table: config, scale, code commit, date, seeds."""
    here = git_commit(Path(__file__).parent)
    runs = sorted({c for c in commits if c and c != here})
    extra = f" (runs from {', '.join(runs)})" if runs else ""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    seed_text = ",".join(str(s) for s in seeds)
    return f"config={config_name} scale={scale} commit={here}{extra} date={date} seeds={seed_text}"


# ---------------------------------------------------------------------------------------------- rendering
def _num(v, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


COMPUTED_MARK = "*"


def protocol_heading(protocol: str, datasets) -> str:
    """`MSCOCO 5K`, plus the data the reproduced rows actually used when that is not the paper's (toy-coco 5K)."""
    label = PROTOCOL_LABELS.get(protocol, protocol)
    used = [d for d in dict.fromkeys(datasets) if d]
    if not used:
        return label
    size = {"f30k_1k": "1K", "coco_1k": "1K (5-fold average)", "coco_5k": "5K"}.get(protocol, protocol)
    return f"{label} (paper) · {', '.join(f'{d} {size}' for d in used)} (reproduced)"


def merged_notes(df: pd.DataFrame) -> dict[str, str]:
    """One note per row: the parts (split on `; `) shared by all its protocols once, the others prefixed by their
    protocol, e.g. `image encoder Faster-RCNN; MSCOCO 1K: R@sum misprinted ...`."""
    notes: dict[str, str] = {}
    for method, part in df.groupby("method", sort=False):
        per_protocol = {r["protocol"]: [n for n in r["note"].split("; ") if n] for r in part.to_dict("records")}
        everywhere = [n for n in dict.fromkeys(sum(per_protocol.values(), []))
                      if all(n in ps for ps in per_protocol.values())]
        text = list(everywhere)
        if len(per_protocol) > 1:
            for protocol, ps in per_protocol.items():
                own = [n for n in ps if n not in everywhere]
                if own:
                    text.append(f"{PROTOCOL_LABELS.get(protocol, protocol)}: {'; '.join(own)}")
        else:
            text = next(iter(per_protocol.values()))
        if text:
            notes[method] = "; ".join(text)
    return notes


def _paper_cell(rec, m) -> str:
    cell = _num(rec[f"{m}_paper"])
    return cell + COMPUTED_MARK if m == "rsum" and rec.get("rsum_paper_computed") else cell


def display_frame(df: pd.DataFrame, show_delta: bool = True) -> dict[str, pd.DataFrame]:
    """Per protocol heading, the table as printed: a Method column, a Source column (paper / reproduced / Δ), the
    metrics and the status; a reproduced line only for rows with runs. Markdown and the report's HTML share it."""
    metrics = [c[: -len("_paper")] for c in df.columns if c.endswith("_paper")]
    cols = ["Method", "Source", *(METRIC_LABELS[m] for m in metrics), "Status"]
    parts = {}
    for protocol, part in df.groupby("protocol", sort=False):
        lines = []
        for rec in part.to_dict("records"):
            lines.append([rec["method"], "paper", *(_paper_cell(rec, m) for m in metrics), rec["status"]])
            if rec["n_seeds"]:
                cells = []
                for m in metrics:
                    mean, std = rec[f"{m}_mean"], rec[f"{m}_std"]
                    cells.append(_num(mean) + ("" if math.isnan(std) else f" ± {std:.1f}"))
                lines.append(["", "reproduced", *cells, ""])
                if show_delta:  # toy scale drops it: synthetic data against real data is no comparison
                    lines.append(["", "Δ", *(_num(rec[f"{m}_diff"], signed=True) for m in metrics), ""])
        heading = protocol_heading(protocol, part["dataset"] if "dataset" in part else [])
        parts[heading] = pd.DataFrame(lines, columns=cols)
    return parts


LEGEND = ("Reproduced = mean ± std over seeds (std needs two or more); Δ = reproduced − paper (paper scale only); "
          "`–` = not given; `not converged` = runs that failed the convergence rule (docs/evaluation.md); "
          f"R@sum = sum of the six recalls shown; `{COMPUTED_MARK}` = paper R@sum computed by the suite from the six "
          "paper recalls (the paper does not print it). Toy-scale numbers come from synthetic data and are not expected "
          "to match the paper's.")


def to_markdown(df: pd.DataFrame, title: str, header: str, show_delta: bool = True) -> str:
    """Per protocol, up to three lines per row: paper, reproduced (mean ± std), Δ = reproduced − paper."""
    out = [f"# {title}", "", f"`{header}`", "", LEGEND, ""]
    for heading, frame in display_frame(df, show_delta).items():
        n_metrics = len(frame.columns) - 3
        out += [f"## {heading}", "", "| " + " | ".join(frame.columns) + " |",
                "|" + "|".join(["---", "---"] + ["---:"] * n_metrics + ["---"]) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in frame.itertuples(index=False)]
        out.append("")
    notes = merged_notes(df)
    if notes:
        out += ["Notes:", "", *(f"- **{m}**: {n}" for m, n in notes.items()), ""]
    return "\n".join(out)


def to_html(df: pd.DataFrame, title: str, header: str, show_delta: bool = True) -> str:
    """The same table as an HTML fragment (pandas `to_html`), for the Snakemake report."""
    import html

    out = [f"<h3>{html.escape(title)}</h3>", f"<p><code>{html.escape(header)}</code></p>",
           f"<p>{html.escape(LEGEND.replace('`', ''))}</p>"]
    for heading, frame in display_frame(df, show_delta).items():
        out += [f"<h4>{html.escape(heading)}</h4>", frame.to_html(index=False, border=1, classes="itrbench-table")]
    notes = merged_notes(df)
    if notes:
        out += ["<p>Notes:</p>", "<ul>", *(f"<li><b>{html.escape(m)}</b>: {html.escape(n)}</li>" for m, n in notes.items()),
                "</ul>"]
    return "\n".join(out) + "\n"


def write_table(df: pd.DataFrame, md_path, csv_path, title: str, header: str, html_path=None,
                show_delta: bool = True) -> None:
    """Markdown and CSV (first line: `# <header>`; read with pandas.read_csv(path, skiprows=1)), optionally HTML."""
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(to_markdown(df, title, header, show_delta), encoding="utf-8")
    if html_path:
        with atomic_path(html_path) as tmp:
            Path(tmp).write_text(to_html(df, title, header, show_delta), encoding="utf-8")
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(f"# {header}\n" + df.to_csv(index=False, float_format="%.4g"), encoding="utf-8")
