"""Claim verdicts: the t-interval and verdict rule on hand-computed values, claims.yaml, and the command."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from itrbench.cli import main
from itrbench.errors import ConfigError
from itrbench.report.claims import (AGREES, CONTRADICTS, INCONCLUSIVE, NOT_RUN, evaluate_claim, load_claims,
                                    short_query_t2i_r1, t_interval, verdict)
from itrbench.experiments.plan import load_registry
from itrbench.report.tables import load_paper_numbers

REPO = Path(__file__).resolve().parents[1]
SIX = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "workflow" / "experiments.yaml")


@pytest.fixture(scope="module")
def paper():
    return pd.concat([load_paper_numbers(REPO / "workflow" / "paper" / f"{p}.csv") for p in ("coder", "ascl")])


# ------------------------------------------------------------------------------------------------ statistics
def test_t_interval_hand_computed():
    # [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3); t(0.975, 2) = 4.302653 -> half width 2.484138
    mean, lo, hi = t_interval([1, 2, 3])
    assert mean == 2 and lo == pytest.approx(-0.484138, abs=1e-6) and hi == pytest.approx(4.484138, abs=1e-6)
    # [10, 12, 11, 13]: mean 11.5, sd 1.290994, se 0.645497; t(0.975, 3) = 3.182446 -> half 2.054260
    mean, lo, hi = t_interval([10, 12, 11, 13])
    assert mean == 11.5 and lo == pytest.approx(9.445740, abs=1e-5) and hi == pytest.approx(13.554260, abs=1e-5)
    # two values: t(0.975, 1) = 12.706205, sd sqrt(2), se 1
    assert t_interval([2, 4]) == pytest.approx((3, 3 - 12.706205, 3 + 12.706205), abs=1e-6)


def test_t_interval_needs_two_values():
    mean, lo, hi = t_interval([5.0])
    assert mean == 5.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in t_interval([]))


def test_verdicts():
    assert verdict(1.0, 3.0, +1) == AGREES
    assert verdict(1.0, 3.0, -1) == CONTRADICTS
    assert verdict(-3.0, -1.0, -1) == AGREES
    assert verdict(-3.0, -1.0, +1) == CONTRADICTS
    assert verdict(-1.0, 3.0, +1) == INCONCLUSIVE
    assert verdict(0.0, 3.0, +1) == INCONCLUSIVE  # an interval touching 0 does not exclude it
    assert verdict(math.nan, math.nan, +1) == INCONCLUSIVE
    with pytest.raises(ValueError):
        verdict(1.0, 2.0, 0)


# ------------------------------------------------------------------------------------------------ claims.yaml
def test_every_claim_loads_with_paper_effects_from_the_printed_numbers(registry, paper):
    claims = {c["id"]: c for c in load_claims(REPO / "workflow" / "claims.yaml", registry, paper)}
    # CODER Table 2, #2 - #1 over the six R@K: (81.9+95.6+97.9+61.5+85.8+91.8) - (78.7+94.5+97.0+58.6+84.8+90.1)
    assert claims["coder-t2-dcl"]["paper_effect"] == pytest.approx(514.5 - 503.7)
    # AsCL Table II, Flickr30K, R@1+R@5 both ways: AsCL 99.1+99.8+83.0+95.4 vs w/o P&N 98.8+99.4+76.4+91.5
    assert claims["ascl-t2-pn-f30k"]["paper_effect"] == pytest.approx(377.3 - 366.1)
    # CODER Table 4: K=20000 (519.2) vs K=10000 (520.9): the paper's best K; a negative claim
    assert claims["coder-t4-k20000"]["paper_effect"] == pytest.approx(-1.7) and claims["coder-t4-k20000"]["paper_sign"] == -1
    # CODER Fig. 3 without M-DCL, R@1 both ways: (79.3 + 59.3) - (81.9 + 61.5)
    assert claims["coder-f3-small-batch-hurts"]["paper_effect"] == pytest.approx(-4.8)
    assert math.isnan(claims["ascl-f3-short-vs-long"]["paper_effect"]) and claims["ascl-f3-short-vs-long"]["paper_sign"] == 1
    sources = " ".join(c["source"] for c in claims.values())
    for part in ("Table 2", "Table 3", "Table 4", "Fig. 3", "Table II", "Fig. 3(a)", "Fig. 3(b)", "Fig. 5"):
        assert part in sources


def _write_claims(tmp_path, claim: dict) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [claim]}))
    return path


GOOD = {"id": "x", "paper": "coder", "source": "Table 2", "claim": "c", "dataset": "f30k", "protocol": "f30k_1k",
        "metric": "rsum", "toy": {"coder/table2/row2": 1, "coder/table2/row1": -1}, "paper_rows": {"2/2": 1, "2/1": -1}}


@pytest.mark.parametrize("change, message", [
    ({"toy": {"coder/table2/row9": 1, "coder/table2/row1": -1}}, "experiment 'coder/table2/row9' is not in the registry"),
    ({"toy": {"coder/table2/row2": 1, "coder/table2/row1": -1}, "dataset": "coco", "protocol": "coco_5k"},
     "does not run on coco"),
    ({"metric": "rsum5"}, "metric 'rsum5'"),
    ({"paper_sign": 1}, "exactly one of paper_rows, paper_effect, paper_sign"),
    ({"paper_rows": {"2/7": 1, "2/1": -1}}, "no coder row '2/7'"),
    ({"protocol": "coco_5k"}, "does not belong to data set 'f30k'"),
    ({"colour": "red"}, "unknown key(s) colour"),
])
def test_bad_claims_fail_with_one_line(tmp_path, registry, paper, change, message):
    path = _write_claims(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError) as err:
        load_claims(path, registry, paper)
    assert str(path) in str(err.value) and message in str(err.value)


def test_zero_paper_effect_is_refused(tmp_path, registry, paper):
    path = _write_claims(tmp_path, {**GOOD, "paper_rows": {"2/5": 1, "3/6": -1}})  # both are the full model
    with pytest.raises(ConfigError, match="a claim needs a direction"):
        load_claims(path, registry, paper)


# ------------------------------------------------------------------------------------------------ toy effects
def _records(tmp_path, values: dict, converged=True) -> pd.DataFrame:
    """values: {(experiment, seed): rsum}; each R@K gets rsum / 6."""
    rows = []
    for (exp, seed), rsum in values.items():
        d = tmp_path / exp.replace("/", "_") / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"converged": converged}))
        rows.append({"experiment": exp, "dataset_key": "f30k", "protocol": "f30k_1k", "seed": seed,
                     "record_dir": str(d), "run_dir": str(d), "config": {}, **{m: rsum / 6 for m in SIX}})
    return pd.DataFrame(rows)


def test_toy_effect_is_the_mean_of_paired_differences(tmp_path, registry, paper):
    claim = load_claims(_write_claims(tmp_path, GOOD), registry, paper)[0]
    a, b = "coder/table2/row1", "coder/table2/row2"
    # per-seed differences 3, 4, 5 (mean 4, sd 1): interval 4 ± 2.484138 excludes 0 on the paper's side (+10.8)
    recs = _records(tmp_path, {(a, 0): 100, (a, 1): 110, (a, 2): 90, (b, 0): 103, (b, 1): 114, (b, 2): 95,
                               (b, 3): 500})  # seed 3 has no base run: not paired, left out
    line = evaluate_claim(claim, recs, seeds=[0, 1, 2, 3])
    assert line["n_seeds"] == 3 and line["toy_effect"] == pytest.approx(4.0)
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((4 - 2.484138, 4 + 2.484138), abs=1e-5)
    assert line["diff_std"] == pytest.approx(1.0) and line["verdict"] == AGREES and line["converged"] == "yes"
    # the same differences with the other sign contradict the paper
    flipped = _records(tmp_path / "f", {(a, 0): 103, (a, 1): 114, (a, 2): 95, (b, 0): 100, (b, 1): 110, (b, 2): 90},
                       converged=False)
    line = evaluate_claim(claim, flipped, seeds=[0, 1, 2])
    assert line["toy_effect"] == pytest.approx(-4.0) and line["verdict"] == CONTRADICTS
    assert line["converged"] == "no (6/6 runs)"
    # differences -1, 4, 0: the interval holds 0
    noisy = _records(tmp_path / "n", {(a, 0): 100, (a, 1): 110, (a, 2): 90, (b, 0): 99, (b, 1): 114, (b, 2): 90})
    assert evaluate_claim(claim, noisy, seeds=[0, 1, 2])["verdict"] == INCONCLUSIVE


def test_missing_runs_say_not_run_never_a_number(tmp_path, registry, paper):
    from itrbench.report.claims import build_claims, to_markdown

    claim = load_claims(_write_claims(tmp_path, GOOD), registry, paper)[0]
    recs = _records(tmp_path, {("coder/table2/row2", 0): 100, ("coder/table2/row2", 1): 101})
    line = evaluate_claim(claim, recs, seeds=[0, 1])
    assert line["verdict"] == NOT_RUN and math.isnan(line["toy_effect"]) and line["n_seeds"] == 0
    md = to_markdown(build_claims([claim], recs, [0, 1]), "header")
    row = [x for x in md.splitlines() if x.startswith("| c |")][0]
    assert "not run" in row and "[" not in row


def test_short_query_t2i_r1(tiny_toy, tmp_path):
    from itrbench.data.precomp import open_split

    captions = open_split(tiny_toy, "toy-f30k", "test").captions
    short = np.array([len(c.split()) < 10 for c in captions])
    assert short.any() and (~short).any()
    # rank 0 for every long query and for every other short one: R@1 over short queries = share of even short ones
    t2i = np.where(short, np.arange(len(captions)) % 2, 0)
    np.savez(tmp_path / "ranks.npz", i2t=np.zeros(len(captions) // 5, int), t2i=t2i)
    config = {"data": {"root": str(tiny_toy), "dataset": "toy-f30k", "eval_split": "test"}}
    want = 100.0 * np.mean(t2i[short] == 0)
    assert short_query_t2i_r1(tmp_path, config) == pytest.approx(want)


def test_claims_command_end_to_end(tmp_path):
    """Records on disk as the pipeline writes them -> tables/claims.{md,csv}."""
    metrics = []
    for exp, base in (("coder/table2/row1", 300.0), ("coder/table2/row2", 320.0)):
        for seed in (0, 1, 2):
            d = tmp_path / "results" / exp / f"seed{seed}"
            d.mkdir(parents=True)
            r = {m: (base + 2 * seed + (exp.endswith("2") and seed)) / 6 for m in SIX}
            (d / "metrics.json").write_text(json.dumps({"protocols": {"f30k_1k": {**r, "rsum": sum(r.values())}},
                                                        "converged": True}))
            (d / "run.json").write_text(json.dumps({"experiment": exp, "dataset_key": "f30k", "dataset": "toy-f30k",
                                                    "method": "coder", "seed": seed, "config_hash": "h", "run_dir": str(d)}))
            (d / "config.yaml").write_text("method: coder\n")
            metrics.append(str(d / "metrics.json"))
    md, csv = tmp_path / "claims.md", tmp_path / "claims.csv"
    rc = main(["claims", "--claims", str(REPO / "workflow" / "claims.yaml"),
               "--registry", str(REPO / "workflow" / "experiments.yaml"),
               "--paper-numbers", str(REPO / "workflow" / "paper" / "coder.csv"), str(REPO / "workflow" / "paper" / "ascl.csv"),
               "--metrics", *metrics, "--seeds", "0", "1", "2", "--md", str(md), "--csv", str(csv)])
    assert rc == 0
    table = pd.read_csv(csv, skiprows=1).set_index("id")
    # per-seed differences 20, 21, 22: mean 21, sd 1
    assert table.loc["coder-t2-dcl", "toy_effect"] == pytest.approx(21.0)
    assert table.loc["coder-t2-dcl", "verdict"] == AGREES
    assert (table.drop(index="coder-t2-dcl")["verdict"] == NOT_RUN).all()
    text = md.read_text()
    assert "+21.0 [+18.5, +23.5]" in text and "1 agrees, 0 contradicts, 0 inconclusive" in text
