"""Claim verdicts: every ablation claim of both papers (workflow/claims.yaml) against the toy runs.

A claim is a contrast of experiments, sum_e w_e * metric(e), phrased so that the paper's effect says which sign
the paper found. The toy effect is the mean over seeds of the per-seed contrast (every experiment of a seed shares
its initialisation draw and data order, so pairing removes much of the seed noise), with a 95 % Student-t
interval over those per-seed values. Verdict: `agrees` when the interval excludes 0 on the paper's side,
`contradicts` when it excludes 0 on the other side, `inconclusive` otherwise (also with fewer than two seeds);
`not run` when some experiment of the contrast has no record on a common seed. docs/evaluation.md.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from itrbench import methods
from itrbench.errors import ConfigError, DataError
from itrbench.experiments.plan import PROTOCOL_DATASET
from itrbench.utils import atomic_path

LEVEL = 0.95
AGREES, CONTRADICTS, INCONCLUSIVE, NOT_RUN = "agrees", "contradicts", "inconclusive", "not run"
SHORT_QUERY_WORDS = 10  # AsCL Fig. 5: "especially less than 10 words"
SIX = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
METRIC_TERMS = {
    "rsum": SIX,
    "rsum_r1r5": ["i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"],
    "r1": ["i2t_r1", "t2i_r1"],
    **{m: [m] for m in SIX},
}
METRIC_LABELS = {
    "rsum": "R@sum", "rsum_r1r5": "R@1+R@5 (both ways)", "r1": "R@1 (i2t + t2i)",
    "t2i_r1_short": f"t2i R@1, queries < {SHORT_QUERY_WORDS} words",
}
METRICS = [*METRIC_TERMS, "t2i_r1_short"]
CLAIM_KEYS = {"id", "paper", "source", "claim", "dataset", "protocol", "metric", "toy", "paper_rows", "paper_effect",
              "paper_sign", "paper_note"}
REQUIRED = ["id", "paper", "source", "claim", "dataset", "protocol", "metric", "toy"]
PAPER_SPECS = ("paper_rows", "paper_effect", "paper_sign")
COLUMNS = ["id", "paper", "source", "claim", "dataset", "protocol", "metric", "paper_effect", "paper_sign",
           "paper_note", "toy_effect", "ci_low", "ci_high", "n_seeds", "diff_std", "verdict", "converged", "experiments"]


# ---------------------------------------------------------------------------------------------- statistics
def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of `values`; NaN bounds with fewer than two values."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, paper_sign: int) -> str:
    """agrees / contradicts when the interval excludes 0 on the paper's / the other side, else inconclusive."""
    if paper_sign not in (1, -1):
        raise ValueError(f"paper_sign must be +1 or -1, got {paper_sign!r}")
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return INCONCLUSIVE
    return AGREES if (1 if low > 0 else -1) == paper_sign else CONTRADICTS


# ---------------------------------------------------------------------------------------------- claims.yaml
def load_claims(path: str | Path, registry: dict, paper: pd.DataFrame) -> list[dict]:
    """Read and check claims.yaml; each claim gets `paper_effect` (NaN when only a sign) and `paper_sign`."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: claims file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list) or not doc["claims"]:
        raise ConfigError(f"{path}: expected a non-empty list under 'claims'")
    out, seen = [], set()
    for i, c in enumerate(doc["claims"]):
        where = f"{path}: claims[{i}]" + (f" ({c['id']})" if isinstance(c, dict) and "id" in c else "")
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: expected a mapping")
        if c.get("id") in seen:
            raise ConfigError(f"{where}: duplicate id")
        seen.add(c.get("id"))
        out.append(_check_claim(c, where, registry, paper))
    return out


def _check_claim(c: dict, where: str, registry: dict, paper: pd.DataFrame) -> dict:
    unknown = sorted(set(c) - CLAIM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(CLAIM_KEYS))}")
    missing = [k for k in REQUIRED if k not in c]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    if c["metric"] not in METRICS:
        raise ConfigError(f"{where}: metric {c['metric']!r}; expected one of {', '.join(METRICS)}")
    if PROTOCOL_DATASET.get(c["protocol"]) != c["dataset"]:
        raise ConfigError(f"{where}: protocol {c['protocol']!r} does not belong to data set {c['dataset']!r}")
    if not isinstance(c["toy"], dict) or len(c["toy"]) < 2:
        raise ConfigError(f"{where}: toy: expected {{experiment: weight}} with at least two experiments")
    for exp, w in c["toy"].items():
        if exp not in registry["experiments"]:
            raise ConfigError(f"{where}: toy: experiment {exp!r} is not in the registry")
        if c["dataset"] not in registry["experiments"][exp]["datasets"]:
            raise ConfigError(f"{where}: toy: experiment {exp!r} does not run on {c['dataset']}")
        if not isinstance(w, (int, float)) or w == 0:
            raise ConfigError(f"{where}: toy: weight of {exp!r} must be a non-zero number, got {w!r}")
    specs = [k for k in PAPER_SPECS if k in c]
    if len(specs) != 1:
        raise ConfigError(f"{where}: expected exactly one of {', '.join(PAPER_SPECS)}, got {specs or 'none'}")
    if "paper_rows" in c:
        effect = paper_rows_effect(c, paper, where)
    elif "paper_effect" in c:
        effect = float(c["paper_effect"])
        if "paper_note" not in c:
            raise ConfigError(f"{where}: paper_effect needs a paper_note saying where the number comes from")
    else:
        if c["paper_sign"] not in (1, -1):
            raise ConfigError(f"{where}: paper_sign must be 1 or -1, got {c['paper_sign']!r}")
        effect = math.nan
    sign = int(c["paper_sign"]) if "paper_sign" in c else int(np.sign(effect))
    if sign == 0:
        raise ConfigError(f"{where}: the paper effect is 0: a claim needs a direction")
    return {**c, "paper_effect": effect, "paper_sign": sign, "paper_note": c.get("paper_note", "")}


def paper_rows_effect(c: dict, paper: pd.DataFrame, where: str) -> float:
    """sum_r w_r * metric(r) over the paper's printed rows (`<table>/<row>`) on the claim's protocol."""
    if c["metric"] not in METRIC_TERMS:
        raise ConfigError(f"{where}: metric {c['metric']} is not printed in a table; give paper_effect or paper_sign")
    total = 0.0
    for key, w in c["paper_rows"].items():
        table, _, row = str(key).partition("/")
        hit = paper[(paper["paper"] == c["paper"]) & (paper["table"] == table) & (paper["row"] == row)
                    & (paper["protocol"] == c["protocol"])]
        if len(hit) != 1:
            raise ConfigError(f"{where}: paper_rows: no {c['paper']} row {key!r} on {c['protocol']} in the paper numbers")
        values = hit.iloc[0][METRIC_TERMS[c["metric"]]].astype(float)
        if values.isna().any():
            raise ConfigError(f"{where}: paper_rows: row {key!r} does not print every term of {c['metric']}")
        total += float(w) * float(values.sum())
    return round(total, 6)  # the printed numbers have one decimal: drop float noise


# ---------------------------------------------------------------------------------------------- toy values
def record_converged(record_dir) -> bool | None:
    try:
        return json.loads((Path(record_dir) / "metrics.json").read_text()).get("converged")
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{record_dir}/metrics.json: unreadable ({type(err).__name__})") from None


@lru_cache(maxsize=None)
def _query_lengths(root: str, dataset: str, split: str) -> np.ndarray:
    from itrbench.data.precomp import open_split

    return np.array([len(c.split()) for c in open_split(root, dataset, split).captions])


def short_query_t2i_r1(run_dir, config: dict, max_words: int = SHORT_QUERY_WORDS - 1) -> float:
    """t2i R@1 (percent) over the evaluation captions of at most `max_words` words, from the run's ranks.npz."""
    path = Path(run_dir) / "ranks.npz"
    try:
        with np.load(path) as z:
            t2i = z["t2i"]
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{path}: expected per-caption text-to-image ranks under 't2i' ({type(err).__name__})") from None
    d = config["data"]
    lengths = _query_lengths(d["root"], d["dataset"], d["eval_split"])[: len(t2i)]
    if len(lengths) != len(t2i):
        raise DataError(f"{path}: {len(t2i)} ranks but only {len(lengths)} captions in the evaluation split")
    short = lengths <= max_words
    if not short.any():
        raise DataError(f"{path}: no evaluation caption has fewer than {max_words + 1} words")
    return 100.0 * float((t2i[short] < 1).mean())


def metric_values(records: pd.DataFrame, metric: str) -> pd.Series:
    """The claim metric of each record (index aligned with `records`)."""
    if metric in METRIC_TERMS:
        return records[METRIC_TERMS[metric]].sum(axis=1, skipna=False)
    return pd.Series([short_query_t2i_r1(r["run_dir"], r["config"]) for r in records.to_dict("records")],
                     index=records.index, dtype=float)


def evaluate_claim(claim: dict, records: pd.DataFrame, seeds) -> dict:
    """One line of the claims table."""
    seeds = [int(s) for s in seeds]
    exps = list(claim["toy"])
    out = {k: claim[k] for k in ("id", "paper", "source", "claim", "dataset", "protocol", "metric", "paper_effect",
                                 "paper_sign", "paper_note")}
    out["experiments"] = " ".join(f"{w:+g}×{e}" for e, w in claim["toy"].items())
    recs = records[(records["protocol"] == claim["protocol"]) & (records["dataset_key"] == claim["dataset"])
                   & records["experiment"].isin(exps) & records["seed"].isin(seeds)].drop_duplicates(["experiment", "seed"])
    common = sorted(set.intersection(*(set(recs.loc[recs["experiment"] == e, "seed"]) for e in exps)))
    if not common:
        return {**out, "toy_effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_seeds": 0,
                "diff_std": math.nan, "verdict": NOT_RUN, "converged": ""}
    recs = recs[recs["seed"].isin(common)]
    values = metric_values(recs, claim["metric"])
    table = pd.DataFrame({"experiment": recs["experiment"], "seed": recs["seed"], "v": values}).pivot(
        index="seed", columns="experiment", values="v")
    per_seed = sum(float(w) * table[e] for e, w in claim["toy"].items()).to_numpy(float)
    mean, low, high = t_interval(per_seed)
    flags = [record_converged(d) for d in recs["record_dir"]]
    bad = sum(f is False for f in flags)
    converged = "unknown" if any(f is None for f in flags) else ("yes" if bad == 0 else f"no ({bad}/{len(flags)} runs)")
    return {**out, "toy_effect": mean, "ci_low": low, "ci_high": high, "n_seeds": len(per_seed),
            "diff_std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan,
            "verdict": verdict(low, high, claim["paper_sign"]), "converged": converged}


def build_claims(claims: list[dict], records: pd.DataFrame, seeds) -> pd.DataFrame:
    return pd.DataFrame([evaluate_claim(c, records, seeds) for c in claims], columns=COLUMNS)


# ---------------------------------------------------------------------------------------------- rendering
def _num(v, signed: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def paper_label(paper: str) -> str:
    """The display name of a paper: the registry keys each paper by the method it reproduces (`paper: <method>`)."""
    return methods.labels().get(paper, paper)


def paper_cell(rec: dict) -> str:
    if math.isnan(rec["paper_effect"]):
        return ("+" if rec["paper_sign"] > 0 else "−") + " (sign only)"
    return _num(rec["paper_effect"])


def to_markdown(df: pd.DataFrame, header: str) -> str:
    counts = df["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in (AGREES, CONTRADICTS, INCONCLUSIVE, NOT_RUN))
    out = ["# Claims of the papers' ablations: verdicts on this run", "", f"`{header}`", "",
           f"{len(df)} claims: {summary}.", "",
           "Toy effect = mean over seeds of the per-seed contrast of the listed experiments (same seeds), with its "
           f"{LEVEL:.0%} Student-t interval; verdict `agrees` / `contradicts` when the interval excludes 0 on the "
           "paper's / the other side, else `inconclusive`. Paper effect = the same contrast on the paper's printed "
           "numbers (or its text / figure, see notes). Effects are in points of the metric. `converged` = whether "
           "every run in the contrast met the convergence rule (docs/evaluation.md).", "",
           "| Claim | Source | Data | Metric | Paper effect | Toy effect [95 % CI] | Seeds | Verdict | Converged |",
           "|---|---|---|---|---:|---|---:|---|---|"]
    for rec in df.to_dict("records"):
        if rec["verdict"] == NOT_RUN:
            toy = NOT_RUN
        elif math.isnan(rec["ci_low"]):
            toy = f"{_num(rec['toy_effect'])} [–]"
        else:
            toy = f"{_num(rec['toy_effect'])} [{_num(rec['ci_low'])}, {_num(rec['ci_high'])}]"
        out.append("| " + " | ".join([
            rec["claim"], f"{paper_label(rec['paper'])} {rec['source']}",
            rec["protocol"], METRIC_LABELS.get(rec["metric"], rec["metric"]), paper_cell(rec), toy,
            str(rec["n_seeds"]), f"**{rec['verdict']}**", rec["converged"] or "–"]) + " |")
    notes = [f"- **{r['id']}**: {r['paper_note']}" for r in df.to_dict("records") if r["paper_note"]]
    if notes:
        out += ["", "Paper effects not read from a printed table row:", "", *notes]
    out += ["", "Contrasts (weight × experiment):", "", *(f"- **{r['id']}**: {r['experiments']}" for r in df.to_dict("records"))]
    return "\n".join(out) + "\n"


def write_claims(df: pd.DataFrame, md_path, csv_path, header: str) -> None:
    """Markdown and CSV (first line: `# <header>`; read with pandas.read_csv(path, skiprows=1))."""
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(to_markdown(df, header), encoding="utf-8")
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(f"# {header}\n" + df.to_csv(index=False, float_format="%.4g"), encoding="utf-8")
