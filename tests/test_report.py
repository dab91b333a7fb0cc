"""Experiment registry, paper numbers, table builder and figures (no Snakemake here: see test_pipeline.py)."""
import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from itrbench.cli import main
from itrbench.errors import ConfigError, DataError
from itrbench.experiments import layout, plan as reg
from itrbench.report.tables import (
    METRICS, NOT_RUN, REPORTED_ONLY, build_table, load_paper_numbers, load_records,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "workflow" / "config"
SCHEMA = CONFIGS / "schema.yaml"
REGISTRY = REPO / "workflow" / "experiments.yaml"
PAPER = REPO / "workflow" / "paper"
RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


@pytest.fixture(scope="module")
def registry():
    return reg.load_registry(REGISTRY)


@pytest.fixture(scope="module")
def wf_default():
    # The registry logic on every (experiment, data set): the toy budget's `skip` list is tested on its own.
    return {**reg.load_workflow_config(CONFIGS / "default.yaml", SCHEMA), "skip": []}


def test_skip_leaves_out_matching_runs(wf_default, registry):
    plan = reg.plan_runs({**wf_default, "skip": ["coco:ascl/*"]}, registry)
    full = reg.plan_runs(wf_default, registry)
    left_out = {(r.dataset_key, r.experiment) for r in full.runs} - {(r.dataset_key, r.experiment) for r in plan.runs}
    assert left_out and all(ds == "coco" and exp.startswith("ascl/") for ds, exp in left_out)


@pytest.fixture(scope="module")
def paper():
    return pd.concat([load_paper_numbers(PAPER / "coder.csv"), load_paper_numbers(PAPER / "ascl.csv")], ignore_index=True)


# ------------------------------------------------------------------------------------------------ paper numbers
def test_paper_tables_complete(paper):
    rows = paper.groupby(["paper", "table"])["row"].nunique().to_dict()
    assert rows[("coder", "1")] == 16 and rows[("coder", "2")] == 5 and rows[("coder", "3")] == 6
    assert rows[("coder", "4")] == 4 and rows[("ascl", "I")] == 13 and rows[("ascl", "II")] == 6
    # every other method's row of CODER Table 1 and AsCL Table I, on both of its protocols
    t1 = paper[(paper["paper"] == "coder") & (paper["table"] == "1")]
    assert (t1.groupby("row")["protocol"].apply(sorted) == pd.Series([["coco_1k", "f30k_1k"]] * 16, index=sorted(t1["row"].unique()))).all()
    a1 = paper[(paper["paper"] == "ascl") & (paper["table"] == "I")]
    assert set(a1["protocol"]) == {"coco_5k", "f30k_1k"} and len(a1) == 26


def test_paper_rsum_matches_recalls_except_the_two_misprints(paper):
    """A printed R@sum equals the sum of the six R@K, except SHAN's and CODER's COCO rows (kept as printed, noted)."""
    full = paper[paper["rsum"].notna()]
    total = full[RECALLS].sum(axis=1).round(1)
    off = full[(total - full["rsum"]).abs() > 0.05]
    assert sorted(zip(off["row"], off["protocol"])) == [("CODER", "coco_1k"), ("SHAN", "coco_1k")]
    assert all("misprinted" in n for n in off["note"])
    assert total[off.index].tolist() == [519.8, 530.7] and off["rsum"].tolist() == [519.5, 530.6]


@pytest.mark.parametrize("row, protocol, column, value", [
    # spot checks against the papers' text
    ("CODER", "f30k_1k", "t2i_r10", 93.0), ("SGRAF", "coco_1k", "i2t_r1", 79.6), ("VSE++", "coco_1k", "i2t_r5", None),
])
def test_coder_table1_spot_values(paper, row, protocol, column, value):
    cell = paper[(paper["paper"] == "coder") & (paper["table"] == "1") & (paper["row"] == row) & (paper["protocol"] == protocol)][column]
    assert len(cell) == 1
    assert (np.isnan(cell.iloc[0]) if value is None else cell.iloc[0] == value)


def test_paper_numbers_bad_input(tmp_path):
    good = (PAPER / "ascl.csv").read_text().splitlines()
    cases = {
        "protocol": good[1].replace("coco_5k", "coco_9k"),
        "in [0, 100]": good[1].replace("41.3", "141.3"),
        "duplicate": good[1],
    }
    for needle, line in cases.items():
        path = tmp_path / f"{needle[:5]}.csv"
        path.write_text("\n".join([good[0], good[1], line] if needle == "duplicate" else [good[0], line]) + "\n")
        with pytest.raises(DataError) as err:
            load_paper_numbers(path)
        assert str(path) in str(err.value) and needle in str(err.value)
    cols = tmp_path / "cols.csv"
    cols.write_text("paper,table,row\nascl,I,x\n")
    with pytest.raises(DataError, match="expected columns"):
        load_paper_numbers(cols)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_rows_exist_in_paper_numbers(registry, paper):
    for name, exp in registry["experiments"].items():
        for rep in exp["reports"]:
            spec = registry["tables"][rep["table"]]
            rows = paper[(paper["paper"] == spec["paper"]) & (paper["table"] == spec["table"])]["row"]
            # exceptions: the suite's own baseline, shown next to the paper's VSE++ row it is not, and extra rows
            # (SCAN's single models) whose note says they are not in the paper's table
            extra = exp.get("note", "").startswith("not in the paper's table")
            assert rep["row"] in set(rows) or (name == "vsepp/baseline" and "VSE++" in set(rows)) or extra, (name, rep)


def test_identical_configs_share_one_hash(wf_default, registry):
    h = {n: reg.config_hash(reg.resolve_experiment(wf_default, registry, n, "f30k"))
         for n in ["coder/table1/coder", "coder/table2/row5", "coder/table3/row6", "coder/table4/k10000",
                   "coder/table4/k5000", "coder/table3/row3", "coder/fig3/bs128-no-mdcl", "vsepp/baseline"]}
    assert h["coder/table1/coder"] == h["coder/table2/row5"] == h["coder/table3/row6"] == h["coder/table4/k10000"]
    assert h["coder/table3/row3"] == h["coder/fig3/bs128-no-mdcl"]  # w/o M-DCL at the default batch 128
    assert len({h["coder/table1/coder"], h["coder/table4/k5000"], h["coder/table3/row3"], h["vsepp/baseline"]}) == 4
    # the same experiment on the other data set is another run; the seed is not part of the identity
    coco = reg.resolve_experiment(wf_default, registry, "coder/table1/coder", "coco")
    assert reg.config_hash(coco) != h["coder/table1/coder"]
    seeded = reg.resolve_experiment(wf_default, registry, "coder/table1/coder", "f30k", seed=2)
    assert seeded["seed"] == 2 and reg.config_hash(seeded) == h["coder/table1/coder"]


def test_resolution_order(wf_default, registry):
    """schema defaults < run < methods.<m> < bases < datasets.<d> < experiment overrides."""
    wf = copy.deepcopy(wf_default)
    wf["run"]["train"] = {"epochs": 2, "lr": 0.1}
    wf["methods"]["coder"]["train"].update({"epochs": 3})
    wf["datasets"]["f30k"]["methods"]["coder"] = {"coder": {"pgc_k_paper": 777}, "train": {"grad_clip": 1.5}}
    cfg = reg.resolve_experiment(wf, registry, "coder/table4/k5000", "f30k")
    assert cfg["train"]["epochs"] == 3                  # methods beat run
    assert cfg["train"]["lr"] == wf_default["methods"]["coder"]["train"]["lr"]
    assert cfg["train"]["grad_clip"] == 1.5             # data set layer
    assert cfg["coder"]["pgc_k_paper"] == 5000          # experiment override beats the data set's K
    assert cfg["coder"]["mdcl"] is True                 # from the registry base
    assert cfg["data"]["dataset"] == "toy-f30k" and cfg["data"]["eval_split"] == "test"
    assert cfg["coder"]["concept_dir"] == "results/concepts/toy-f30k"
    other = reg.resolve_experiment(wf, registry, "coder/table1/coder", "f30k")
    assert other["coder"]["pgc_k_paper"] == 777


def test_changing_one_override_changes_only_that_experiments_hash(wf_default, registry):
    before = reg.plan_runs(wf_default, registry)
    changed = copy.deepcopy(registry)
    changed["experiments"]["coder/table2/row3"]["overrides"]["train"] = {"lr": 0.123}
    after = reg.plan_runs(wf_default, changed)
    diff = {(a.experiment, a.dataset) for a, b in zip(before.runs, after.runs) if a.hash != b.hash}
    assert diff == {("coder/table2/row3", "toy-f30k")}


def test_plan_counts(wf_default, registry):
    plan = reg.plan_runs(wf_default, registry)
    n_exp_ds = sum(len(e["datasets"]) for e in registry["experiments"].values())
    assert len(plan.runs) == n_exp_ds * len(wf_default["seeds"])
    configs = {r.hash for r in plan.runs}
    assert len(plan.unique_runs) == len(configs) * len(wf_default["seeds"]) < len(plan.runs)
    only = dict(wf_default, only=["coder/table2/*"], seeds=[0])
    assert {r.experiment for r in reg.plan_runs(only, registry).runs} == {f"coder/table2/row{i}" for i in range(1, 6)}


def _write_registry(tmp_path, mutate):
    data = yaml.safe_load(REGISTRY.read_text())
    mutate(data)
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["experiments"]["coder/table2/row3"].update(overides={}), "unknown key 'experiments.coder/table2/row3.overides'"),
    (lambda d: d["experiments"]["coder/table2/row3"]["overrides"]["coder"].update(mdlc=True), "coder.mdlc"),
    (lambda d: d["experiments"]["coder/table2/row3"]["overrides"].update(train={"epochz": 3}), "train.epochz"),
    (lambda d: d["experiments"]["coder/table2/row3"].update(base="codr"), "unknown base 'codr'"),
    (lambda d: d["experiments"]["coder/table2/row3"].update(reports=[{"table": "coder_table9", "row": "3"}]), "coder_table9"),
    (lambda d: d["experiments"]["coder/table2/row3"].update(reports=[{"table": "coder_table2", "row": "2"}]), "already reported"),
    (lambda d: d["experiments"]["coder/table2/row3"].update(datasets=["flickr"]), "datasets"),
    (lambda d: d["figures"]["ascl_fig5_query_length"].update(needs=[{"input": "depth_maps"}]),
     "figures.ascl_fig5_query_length.needs.0.input' must be one of ['captions', 'alignment_uniformity']"),
    (lambda d: d["figures"]["ascl_fig5_query_length"].update(needs=[{"input": "captions", "protocol": "coco_9k"}]),
     "figures.ascl_fig5_query_length.needs.0.protocol"),
])
def test_registry_errors_name_file_and_key(tmp_path, mutate, needle):
    if needle == "coder.mdlc":
        from itrbench.config import run_schema
        if "mdcl" not in run_schema()["properties"]["coder"].get("properties", {}):
            pytest.skip("the coder section of the run schema is not written yet")
    path = _write_registry(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        reg.load_registry(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


def test_workflow_config_errors_and_env(tmp_path, monkeypatch):
    text = (CONFIGS / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("\nseeds:", "\nsedes:"))
    with pytest.raises(ConfigError, match=rf"{bad}: invalid workflow config: unknown key 'sedes'"):
        reg.load_workflow_config(bad, CONFIGS / "schema.yaml")
    monkeypatch.setenv("ITRB_TEST_ROOT", "/somewhere")
    monkeypatch.delenv("ITRB_UNSET", raising=False)
    assert reg.expand_env({"a": ["${ITRB_TEST_ROOT}/x", "${ITRB_UNSET:-dflt}"], "n": 3}) == {"a": ["/somewhere/x", "dflt"], "n": 3}
    with pytest.raises(ConfigError, match="cfg.k: environment variable ITRB_UNSET is not set"):
        reg.expand_env({"k": "${ITRB_UNSET}"}, "cfg")


def test_paper_config_resolves_with_env(monkeypatch, registry):
    monkeypatch.setenv("ITRBENCH_DATA", "/data/itr")
    wf = reg.load_workflow_config(CONFIGS / "paper.yaml", SCHEMA)
    cfg = reg.resolve_experiment(wf, registry, "ascl/table1/ascl", "coco")
    assert cfg["data"]["root"] == "/data/itr" and cfg["data"]["dataset"] == "coco"
    assert cfg["data"]["protocols"] == ["coco_1k", "coco_5k"] and cfg["model"]["embed_dim"] == 1024
    assert cfg["train"]["lr"] == 0.0005 and cfg["train"]["epochs"] == 20 and cfg["train"]["lr_decay_epochs"] == [10]


# ------------------------------------------------------------------------------------------------ tables
def _record(root, run, values_by_protocol, extra=None):
    """A fake experiment record as the pipeline writes it (metrics.json + run.json + config.yaml)."""
    run_dir = Path(root) / run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    protocols = {p: {**v, "rsum": float(sum(v[m] for m in RECALLS))} for p, v in values_by_protocol.items()}
    (run_dir / "metrics.json").write_text(json.dumps({"protocols": protocols, "git_commit": "abc1234", **(extra or {})}))
    out = Path(root) / run.experiment_dir
    reg.write_experiment_record(run, run_dir / "metrics.json", out)
    return out / "metrics.json"


def _values(base):
    return {m: float(base + i) for i, m in enumerate(RECALLS)}


def test_build_table_mean_std_diff_and_statuses(tmp_path, wf_default, registry, paper):
    plan = reg.plan_runs(dict(wf_default, only=["coder/table2/row1", "coder/table2/row2"]), registry)
    paths = []
    for r in plan.runs:
        if r.experiment == "coder/table2/row1":  # three seeds with hand-picked numbers
            paths.append(_record(tmp_path, r, {"f30k_1k": _values(10.0 * (r.seed + 1))}))
    records = load_records(paths)
    table = build_table("coder_table2", registry, paper, records, seeds=[0, 1, 2]).set_index("row")
    assert list(table.index) == ["1", "2", "3", "4", "5"]
    row1 = table.loc["1"]
    assert row1["status"] == "3/3 seeds" and row1["n_seeds"] == 3
    # seed k has i2t_r1 = 10 (k + 1): mean 20, sample std 10; paper 78.7
    assert row1["i2t_r1_mean"] == pytest.approx(20.0) and row1["i2t_r1_std"] == pytest.approx(10.0)
    assert row1["i2t_r1_diff"] == pytest.approx(20.0 - 78.7) and row1["i2t_r1_paper"] == 78.7
    rsums = [sum(_values(10.0 * (k + 1)).values()) for k in range(3)]
    # the paper prints six recalls but no R@sum: computed from them (marked), so the difference is defined
    paper_sum = round(sum(row1[f"{m}_paper"] for m in RECALLS), 1)
    assert row1["rsum_mean"] == pytest.approx(np.mean(rsums)) and row1["rsum_paper"] == pytest.approx(paper_sum)
    assert row1["rsum_paper_computed"] and row1["rsum_diff"] == pytest.approx(np.mean(rsums) - paper_sum)
    row2 = table.loc["2"]
    assert row2["status"] == NOT_RUN and row2["n_seeds"] == 0
    assert all(np.isnan(row2[f"{m}_mean"]) for m in METRICS)  # never a paper number in a reproduced cell
    assert row2["i2t_r1_paper"] == 81.9
    # seeds outside the config's list do not count
    partial = build_table("coder_table2", registry, paper, records, seeds=[0, 5]).set_index("row").loc["1"]
    assert partial["status"] == "1/2 seeds" and partial["i2t_r1_mean"] == 10.0 and np.isnan(partial["i2t_r1_std"])


def test_table1_reported_only_rows_and_protocol_matching(tmp_path, wf_default, registry, paper):
    plan = reg.plan_runs(dict(wf_default, only=["vsepp/baseline"], seeds=[0]), registry)
    base = {"coco_1k": 5.0, "coco_5k": 6.0, "f30k_1k": 7.0}
    paths = [_record(tmp_path, r, {p: _values(base[p]) for p in r.config["data"]["protocols"]})
             for r in plan.runs]
    t1 = build_table("coder_table1", registry, paper, load_records(paths), seeds=[0])
    vse = t1[t1["row"] == "VSE∞ (GPO + BTR)"].set_index("protocol")
    assert vse.loc["coco_1k", "i2t_r1_mean"] == 5.0 and vse.loc["f30k_1k", "i2t_r1_mean"] == 7.0
    assert np.isnan(vse.loc["coco_1k", "i2t_r5_paper"]) and np.isnan(vse.loc["coco_1k", "i2t_r5_diff"])
    assert (t1[t1["row"] == "VSE++"]["status"] == REPORTED_ONLY).all()     # the paper's VSE++ row, for comparison
    # rows the registry reproduces but this plan (VSE∞ only) does not run: `not run`, on both protocols
    reproduced = {rep["row"] for e in registry["experiments"].values() for rep in e["reports"] if rep["table"] == "coder_table1"}
    unplanned = t1[t1["row"].isin(reproduced - {"VSE∞ (GPO + BTR)"})]
    assert {"CODER", "SCAN"} <= set(unplanned["row"])
    assert len(unplanned) == 2 * len(reproduced - {"VSE∞ (GPO + BTR)"}) and set(unplanned["status"]) == {NOT_RUN}
    # every other row the paper prints is `reported only`, on both protocols, with no reproduced number
    others = t1[~t1["row"].isin(reproduced | {"VSE++"})]
    printed = set(paper[(paper["paper"] == "coder") & (paper["table"] == "1")]["row"]) - reproduced - {"VSE++"}
    assert len(others) == 2 * len(printed) > 0 and set(others["status"]) == {REPORTED_ONLY}
    assert others[[f"{m}_mean" for m in METRICS]].isna().all().all()
    assert t1.set_index(["row", "protocol"]).loc[("CODER", "f30k_1k"), "status"] == NOT_RUN
    a1 = build_table("ascl_table1", registry, paper, load_records(paths), seeds=[0])
    assert a1[a1["row"] == "VSE∞ (GPO + BTR)"].set_index("protocol").loc["coco_5k", "i2t_r1_mean"] == 6.0


def test_table_cli_writes_markdown_and_csv(tmp_path, wf_default, registry, monkeypatch):
    plan = reg.plan_runs(dict(wf_default, only=["ascl/table1/ascl"], seeds=[0, 1]), registry)
    paths = [_record(tmp_path, r, {p: _values(20.0 + r.seed) for p in r.config["data"]["protocols"]}) for r in plan.runs]
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    rc = main(["table", "ascl_table2", "--registry", str(REGISTRY), "--paper-numbers", str(PAPER / "ascl.csv"),
               "--metrics", *map(str, paths), "--seeds", "0", "1", "--config-name", "default", "--scale", "toy",
               "--md", str(md), "--csv", str(csv)])
    assert rc == 0
    text = md.read_text()
    first = csv.read_text().splitlines()[0]
    assert first.startswith("# config=default scale=toy commit=") and "seeds=0,1" in first and "date=" in first
    assert first[2:] in text and "## MSCOCO 5K" in text and "## Flickr30K 1K" in text
    # AsCL Table II prints R@1 and R@5 only: the R@10 columns read `–` so R@sum is the sum of the columns shown
    assert "| Method | Source | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | R@sum | Status |" in text
    assert "| AsCL | paper | 94.8 | 99.4 | – | 66.7 | 87.3 | – | – | 2/2 seeds |" in text
    assert "| -w/o MF | paper | 39.7 | 71.2 | – | 31.0 | 58.7 | – | – | not run |" in text
    assert "20.5 ± 0.7" in text  # i2t_r1 over seeds 20, 21
    df = pd.read_csv(csv, skiprows=1)
    printed = pd.read_csv(PAPER / "ascl.csv", dtype={"table": str})
    printed = printed[printed["table"] == "II"]
    assert len(df) == len(printed) and df["i2t_r10_paper"].isna().all()  # one row per printed (row, protocol)
    ascl = df[(df["row"] == "AsCL") & (df["protocol"] == "coco_5k")].iloc[0]
    assert ascl["i2t_r1_mean"] == 20.5 and ascl["i2t_r1_diff"] == pytest.approx(20.5 - 94.8)


def test_records_need_their_pointer(tmp_path):
    lonely = tmp_path / "x" / "metrics.json"
    lonely.parent.mkdir()
    lonely.write_text(json.dumps({"protocols": {}}))
    with pytest.raises(DataError, match="unreadable experiment record"):
        load_records([lonely])


# ------------------------------------------------------------------------------------------------ figures
def test_t2i_r1_by_length_matches_hand_count(tmp_path):
    from itrbench.report.figures import t2i_r1_by_length

    captions = ["a b c", "a b c d e f g h", "one two three four five six seven eight nine ten eleven", "x y", "p q r s t u v w x"]
    ranks = np.array([0, 3, 0, 1, 0])
    np.savez(tmp_path / "ranks.npz", t2i=ranks)
    got = t2i_r1_by_length(tmp_path / "ranks.npz", captions)
    # lengths 3, 8, 11, 2, 9 -> buckets ≤7: ranks (0, 1) -> 50%; 8–9: (3, 0) -> 50%; 10–11: (0) -> 100%
    assert got["≤7"] == 50.0 and got["8–9"] == 50.0 and got["10–11"] == 100.0 and np.isnan(got["≥17"])


def _text_boxes(fig, renderer):
    """(what, bbox) of every visible piece of text: titles, axis labels, tick labels, annotations, footers."""
    boxes = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]  # ax.texts: annotations, "no runs yet"
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(limits)
            for minor in (False, True):  # only ticks in view are drawn; the others keep a label off the panel
                texts += [lab for t, lab in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor))
                          if lo <= t <= hi]
        boxes += [(f"{'annotation' if t in ax.texts else 'text'} {t.get_text()!r} of panel {ax.get_title()!r}",
                   t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    boxes += [(f"figure text {t.get_text()!r}", t.get_window_extent(renderer)) for t in fig.texts if t.get_text().strip()]
    return boxes


def _labelled_ticks(ax, axis="x"):
    """The tick labels a reader sees on an axis: inside the view, non-empty."""
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [lab.get_text() for t, lab in zip(ticks, labels) if lo <= t <= hi and lab.get_text().strip()]


def check_honest_figure(fig, name):
    """Bars start at 0; a legend covers no panel, no text and no other legend; a log axis carries at least two
    labelled ticks; every text lies inside the saved image; reproduced panels name the toy data they show."""
    import matplotlib.patches

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes] + \
             [ax.get_ylabel() for ax in fig.axes]
    texts = _text_boxes(fig, renderer)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for ax in fig.axes:
        if any(isinstance(a, matplotlib.patches.Rectangle) and a.get_height() > 0 for a in ax.patches):
            assert ax.get_ylim()[0] <= 0, (name, "bar axis does not start at 0")
        for axis in ("x", "y"):
            if (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log":
                assert len(_labelled_ticks(ax, axis)) >= 2, (name, f"log {axis} axis with < 2 labelled ticks",
                                                             _labelled_ticks(ax, axis))
        if ax.get_xscale() == "log":  # an error bar reaching 0 or below is cut off a log axis
            for coll in ax.collections:
                for seg in getattr(coll, "get_segments", lambda: [])():
                    assert (np.asarray(seg)[:, 0] > 0).all(), (name, "error bar off the log axis")
    for i, legend in enumerate(legends):
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (name, "legend over the panel", ax.get_title())
        for what, other in texts:
            assert not box.overlaps(other), (name, "legend over", what)
        for other in legends[i + 1:]:
            assert not box.overlaps(other.get_window_extent(renderer)), (name, "two legends overlap")
    # titles, axis and tick labels, footer and provenance stamp stay apart (annotations beside data points may
    # touch each other when points are close: they are left out)
    plain = [(what, box) for what, box in texts if not what.startswith("annotation")]
    for i, (what, box) in enumerate(plain):
        for other_what, other in plain[i + 1:]:
            assert not box.overlaps(other), (name, what, "overlaps", other_what)
    saved = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # what savefig(bbox="tight") keeps
    for what, box in texts:
        assert saved.x0 - 1 <= box.x0 and box.x1 <= saved.x1 + 1 and saved.y0 - 1 <= box.y0 and box.y1 <= saved.y1 + 1, \
            (name, what, "outside the saved image")
    assert any("toy-" in t for t in titles), (name, titles)  # the records are toy data: say so
    assert not any("MSCOCO 5K" in t for t in titles), (name, titles)


def build_figure_records(root, wf_default, registry, throughput=lambda rng: float(10 ** rng.uniform(4, 8))):
    """Experiment records of every figure's experiments, two seeds, random recalls, as the pipeline writes them
    under `root` (which must be the working directory: run folders are relative); returns load_records(...)."""
    from itrbench.data.toyscenes import generate_toyscenes

    wf = copy.deepcopy(wf_default)
    wf["seeds"] = [0, 1]
    for entry in wf["datasets"].values():  # small evaluation splits for the query-length figure
        entry["root"] = "data"
    generate_toyscenes("data", "toy-f30k", splits={"train": 5, "test": 4}, n_regions=6, feat_dim=8, global_dim=8)
    generate_toyscenes("data", "toy-coco", splits={"train": 5, "testall": 5}, n_regions=6, feat_dim=8, global_dim=8)
    plan = reg.plan_runs(wf, registry)
    rng = np.random.default_rng(0)
    paths = []
    for r in plan.runs:
        n_caps = 20 if r.dataset == "toy-f30k" else 25
        paths.append(_record(root, r, {p: _values(rng.uniform(5, 60)) for p in r.config["data"]["protocols"]},
                             {"pairs_per_second": throughput(rng),
                              "convergence": {"converged": bool(r.seed), "curve": {"epoch": [-1, 0, 1], "step": [0, 8, 16],
                                                                                  "rsum": sorted(rng.uniform(5, 300, 3))}}}))
        np.savez(Path(root) / r.run_dir / "ranks.npz", t2i=rng.integers(0, 3, n_caps))
        (Path(root) / r.path(layout.RECORD_EXTRAS["alignment_uniformity"])).write_text(json.dumps(
            {"alignment": {"image_text": 1.1, "text_text": 0.9}, "uniformity": {"image": {"mean": 1.3, "var": 0.03},
                                                                                  "text": {"mean": 1.39, "var": 0.04}}}))
    return load_records(paths)


def _figure(name, records, paper, registry, provenance="config=test scale=toy commit=abc1234 date=2026-12-03 seeds=0,1"):
    """A figure as `itrbench figure` draws it: the plot of its experiments' records and the provenance stamp."""
    from itrbench.report.figures import figure_plotters, stamp

    members = [n for n, e in registry["experiments"].items() if name in e["figures"]]
    fig = figure_plotters()[name](records[records["experiment"].isin(members)], paper, registry)
    stamp(fig, provenance)
    return fig


@pytest.mark.slow
def test_every_figure_renders(tmp_path, wf_default, registry, paper, monkeypatch):
    from itrbench.report.figures import figure_plotters, save_figure

    FIGURES = figure_plotters()
    monkeypatch.chdir(tmp_path)
    records = build_figure_records(".", wf_default, registry)  # seeds' throughputs 4 decades apart: a ± std bar would cross 0
    assert set(FIGURES) == set(registry["figures"])
    for name in FIGURES:
        fig = _figure(name, records, paper, registry)
        check_honest_figure(fig, name)
        save_figure(fig, tmp_path / f"{name}.png")
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name
    # the paper panel of CODER Fig. 3 draws points only where the paper gives a number (no line through batch 64)
    fig = FIGURES["coder_fig3_batch_size"](records.iloc[:0], paper, registry)
    paper_lines = [ln for ax in fig.axes for ln in ax.get_lines() if "paper" in ln.get_label()]
    assert paper_lines and all(ln.get_linestyle() == "None" and 64 not in list(ln.get_xdata()) for ln in paper_lines)
    # with no runs at all a figure still renders (empty panels), so a partial pipeline can show its state
    save_figure(FIGURES["coder_table4_k"](records.iloc[:0], paper, registry), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 10_000


@pytest.mark.parametrize("low, high", [(4.6, 4.7), (7.3, 7.35), (3.0, 9.0)])
def test_fig4_throughput_axis_has_labelled_ticks(tmp_path, wf_default, registry, paper, monkeypatch, low, high):
    """Throughputs within a few percent of each other (the committed toy run: one decade tick in view, one label) or
    six decades apart: the log axis always shows at least two labelled ticks, in the unit its label explains."""
    monkeypatch.chdir(tmp_path)
    records = build_figure_records(".", wf_default, registry, throughput=lambda rng: float(10 ** rng.uniform(low, high)))
    fig = _figure("coder_fig4_latency_recall", records, paper, registry)
    check_honest_figure(fig, "coder_fig4_latency_recall")
    for ax in fig.axes:
        ticks = _labelled_ticks(ax, "x")
        assert 2 <= len(ticks) <= 10 and all("e" not in t for t in ticks), ticks  # plain numbers, not 1e+06
        unit = re.search(r"\((\w)pps, log scale\)", ax.get_xlabel())
        assert unit, ax.get_xlabel()  # the unit is explained once, in the footer
        footer = "\n".join(t.get_text() for t in fig.texts)
        words = re.search(rf"\b{unit.group(1)}pps = (\w+) image-caption pairs scored per second", footer)
        scale = {"K": 1e3, "M": 1e6, "G": 1e9}[unit.group(1)]
        assert words and words.group(1) == {"K": "thousand", "M": "million", "G": "billion"}[unit.group(1)]
        # the mean point sits where the unit puts it
        part = records[(records["experiment"].isin([n for n, e in registry["experiments"].items()
                                                    if "coder_fig4_latency_recall" in e["figures"]]))]
        xs = sorted(x for line in ax.get_lines() for x in np.atleast_1d(line.get_xdata()))
        assert xs and part["pairs_per_second"].min() / scale * 0.99 <= min(xs) <= max(xs) <= part["pairs_per_second"].max() / scale * 1.01


def test_fig4_labels_of_close_methods_do_not_overlap(tmp_path, wf_default, registry, paper, monkeypatch):
    """Every method at the same throughput and recall (worst case): the names beside the points stay apart."""
    monkeypatch.chdir(tmp_path)
    records = build_figure_records(".", wf_default, registry, throughput=lambda rng: 1e5)
    records = records.assign(**{col: 50.0 for col in records.columns if col.endswith(("r1", "r5", "r10"))})
    fig = _figure("coder_fig4_latency_recall", records, paper, registry)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) >= 3, [t.get_text() for t in ax.texts]
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1:]), [t.get_text() for t in ax.texts]


def test_legend_sits_under_a_two_line_x_label(tmp_path, wf_default, registry, paper, monkeypatch):
    """CODER Table 4 (short panels) had its legends on the x label: the legend hangs under the label whatever the
    panel height; a legend over text fails check_honest_figure, so make the labels long and the panels short."""
    from itrbench.report.figures import finish, legend_below, new_figure

    fig, axes = new_figure(1, 2, panel=(3.0, 2.4))
    for ax in axes[0]:
        ax.plot([1, 2, 3], [3, 1, 2], label="first series with a long name")
        ax.plot([1, 2, 3], [2, 2, 1], label="second")
        ax.set_xlabel("a long x label\non two lines")
        ax.set_title("toy-f30k 1K")
        legend_below(ax, ncol=1)
    check_honest_figure(finish(fig, "layout", "footer line"), "two-line x label")


# ------------------------------------------------------------------------------------------------ table defects
def _table_md(tmp_path, name, paths=(), seeds=(0,), shared=()):
    md, csv, html = tmp_path / f"{name}.md", tmp_path / f"{name}.csv", tmp_path / f"{name}.html"
    rc = main(["table", name, "--registry", str(REGISTRY), "--paper-numbers", str(PAPER / "coder.csv"), str(PAPER / "ascl.csv"),
               "--metrics", *map(str, paths), "--seeds", *map(str, seeds), "--md", str(md), "--csv", str(csv),
               "--html", str(html), *(["--shared", *shared] if shared else [])])
    assert rc == 0
    return md.read_text(), pd.read_csv(csv, skiprows=1, dtype={"row": str}), html.read_text()


def test_table_one_note_per_row(tmp_path):
    """PVSE, SHAN, CODER (CODER Table 1) and `w triplet` (AsCL Table II) have notes on two protocols: one line each."""
    for name, rows in (("coder_table1", ["PVSE [46] (2019)", "SHAN [20] (2021)", "CODER"]), ("ascl_table2", ["-w triplet loss"])):
        text = _table_md(tmp_path, name)[0]
        notes = [line for line in text.splitlines() if line.startswith("- **")]
        labels = [line.split("**")[1] for line in notes]
        assert len(labels) == len(set(labels)), notes
        for row in rows:
            assert labels.count(row) == 1
    text = _table_md(tmp_path, "coder_table1")[0]
    shan = next(line for line in text.splitlines() if line.startswith("- **SHAN"))
    # the part both protocols share once, the COCO-only part named by its protocol
    assert shan == "- **SHAN [20] (2021)**: image encoder Faster-RCNN; MSCOCO 1K (5-fold average): R@sum misprinted in the paper: " \
                   "the six R@K sum to 519.8 (printed value kept)"


def test_table_rsum_is_over_the_shown_columns(tmp_path, wf_default, registry):
    """Every recall R@sum adds up is a column of the table, and the reproduced R@sum equals the sum of the shown means."""
    plan = reg.plan_runs(dict(wf_default, only=["ascl/table1/ascl"], seeds=[0]), registry)
    paths = [_record(tmp_path, r, {p: _values(20.0) for p in r.config["data"]["protocols"]}) for r in plan.runs]
    text, df, _ = _table_md(tmp_path, "ascl_table2", paths)
    header = next(line for line in text.splitlines() if line.startswith("| Method"))
    assert all(label in header for label in ("I→T R@10", "T→I R@10", "R@sum"))
    row = df[(df["row"] == "AsCL") & (df["protocol"] == "f30k_1k")].iloc[0]
    assert row["rsum_mean"] == pytest.approx(sum(row[f"{m}_mean"] for m in RECALLS)) == 20 * 6 + 15
    reproduced = next(line for line in text.splitlines() if line.startswith("|  | reproduced"))
    cells = [c.strip() for c in reproduced.strip("|").split("|")][2:9]
    assert sum(float(c) for c in cells[:6]) == pytest.approx(float(cells[6]))


def test_table_paper_rsum_computed_and_marked(tmp_path, paper):
    """AsCL Table I prints no R@sum: computed from the six paper recalls and marked `*`; printed ones stay unmarked."""
    text, df, _ = _table_md(tmp_path, "ascl_table1")
    ascl = df[(df["row"] == "AsCL") & (df["protocol"] == "coco_5k")].iloc[0]
    assert ascl["rsum_paper"] == pytest.approx(94.8 + 99.4 + 99.8 + 66.7 + 87.3 + 92.3) and ascl["rsum_paper_computed"]
    assert "| AsCL (OURS) | paper | 94.8 | 99.4 | 99.8 | 66.7 | 87.3 | 92.3 | 540.3* | not run |" in text
    assert "`*` = paper R@sum computed" in text
    t1, d1, _ = _table_md(tmp_path, "coder_table1")
    coder = d1[(d1["row"] == "CODER") & (d1["protocol"] == "coco_1k")].iloc[0]
    assert coder["rsum_paper"] == 530.6 and not coder["rsum_paper_computed"]  # printed (misprinted) value kept
    assert "530.6 |" in t1 and "530.6*" not in t1
    # VSE++ lacks R@5: nothing is computed
    vse = d1[(d1["row"] == "VSE++") & (d1["protocol"] == "coco_1k")].iloc[0]
    assert np.isnan(vse["rsum_paper"]) and not vse["rsum_paper_computed"]


def test_table_header_has_no_empty_or_repeated_column(tmp_path):
    text = _table_md(tmp_path, "coder_table1")[0]
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| Method")).strip("|").split("|")]
    assert all(header) and len(header) == len(set(header)) and header[:2] == ["Method", "Source"]
    assert "| DVSA [23] (2015) | paper |" in text  # the paper's label once, not the row key beside it


def test_table_row_reads_a_shared_run(tmp_path, wf_default, registry):
    """coder/table2/row5 is the same run as coder/table1/coder: with only the latter run, row 5 reads its records."""
    plan = reg.plan_runs(dict(wf_default, only=["coder/table1/coder"], seeds=[0]), registry)
    paths = [_record(tmp_path, r, {p: _values(30.0) for p in r.config["data"]["protocols"]}) for r in plan.runs]
    text, df, html = _table_md(tmp_path, "coder_table2", paths)
    assert df.set_index("row").loc["5", "status"] == NOT_RUN
    text, df, html = _table_md(tmp_path, "coder_table2", paths, shared=["coder/table2/row5:f30k=coder/table1/coder"])
    row5 = df.set_index("row").loc["5"]
    assert row5["status"] == "1/1 seeds" and row5["i2t_r1_mean"] == 30.0 and row5["read_from"] == "coder/table1/coder"
    assert df.set_index("row").loc["1", "status"] == NOT_RUN
    assert "<table" in html and "30.0" in html  # the report's inline HTML table carries the rows


def test_table_shared_argument_is_checked():
    with pytest.raises(SystemExit):
        main(["table", "coder_table2"])  # argparse: required options missing
    assert main(["table", "coder_table2", "--paper-numbers", str(PAPER / "coder.csv"), "--md", "x.md", "--csv", "x.csv",
                 "--registry", str(REGISTRY), "--shared", "nonsense"]) == 2
