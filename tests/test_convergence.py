"""Convergence flag: the rule on hand-computed curves, and the trainer's per-epoch dev points."""
import json

import numpy as np
import pytest

from itrbench.convergence import convergence, curve_summary, read_dev_curve
from itrbench.errors import DataError
from itrbench.training import train_and_evaluate


# ------------------------------------------------------------------------------------------------ the rule
def test_plateau_is_converged():
    # 8 epochs -> window of 2: the 3 points 200, 203, 201; line: slope (201 - 200) / 2 = 0.5, rise 1,
    # level at the window's start 604 / 3 - 0.5 = 200.833 -> 0.5 % < 2 %
    r = convergence([10, 100, 150, 180, 190, 195, 200, 203, 201])
    assert r["converged"] is True
    assert r["window_epochs"] == 2
    assert r["window_start_rsum"] == pytest.approx(604 / 3 - 0.5) and r["window_rise_rsum"] == pytest.approx(1.0)
    assert r["window_max_rsum"] == 203
    assert r["relative_gain"] == pytest.approx(1.0 / (604 / 3 - 0.5))
    assert r["final_dev_rsum"] == 201 and r["best_dev_rsum"] == 203 and r["best_epoch"] == 6


def test_still_rising_is_not_converged():
    # window 2: 200, 203, 206 -> rise 6 over a line starting at 200: 3 % >= 2 %
    r = convergence([10, 100, 150, 180, 190, 195, 200, 203, 206])
    assert r["converged"] is False
    assert r["relative_gain"] == pytest.approx(0.03)


def test_least_squares_line_by_hand():
    # 16 epochs -> window ceil(4) = 4: points 100, 104, 101, 106, 105 at x = 0..4; mean x 2, mean y 103.2;
    # slope = sum((x - 2)(y - 103.2)) / sum((x - 2)^2) = 12 / 10 = 1.2; rise 4.8; level 103.2 - 2.4 = 100.8
    curve = [0] + [50] * 11 + [100, 104, 101, 106, 105]
    r = convergence(curve)
    assert r["window_epochs"] == 4
    assert r["window_start_rsum"] == pytest.approx(100.8) and r["window_rise_rsum"] == pytest.approx(4.8)
    assert r["relative_gain"] == pytest.approx(4.8 / 100.8) and r["converged"] is False
    # the same numbers as numpy's own fit
    slope, intercept = np.polyfit(np.arange(5), curve[-5:], 1)
    assert r["window_rise_rsum"] == pytest.approx(4 * slope) and r["window_start_rsum"] == pytest.approx(intercept)


def test_exactly_two_percent_is_not_converged():
    assert convergence([0, 50, 100, 102])["converged"] is False  # 3 epochs -> window 1: 100 -> 102 is 2.0 %
    assert convergence([0, 50, 100, 101.9])["converged"] is True


def test_window_rounds_up_and_a_blip_is_not_a_rise():
    # 5 epochs -> window ceil(1.25) = 2: 100, 110, 100 -> the line is flat: a one-epoch blip is dev noise
    r = convergence([0, 40, 80, 100, 110, 100])
    assert r["window_epochs"] == 2 and r["window_max_rsum"] == 110 and r["window_rise_rsum"] == pytest.approx(0)
    assert r["converged"] is True
    # a falling window is past its plateau
    assert convergence([0, 40, 80, 100, 95, 90])["converged"] is True


def test_one_epoch_compares_with_the_untrained_model():
    r = convergence([12.0, 60.0])
    assert r["window_epochs"] == 1 and r["window_start_rsum"] == 12.0 and r["converged"] is False


def test_zero_start_is_not_converged():
    assert convergence([0, 0, 0, 0, 0])["converged"] is False
    assert convergence([0, 0, 0, 0, 0])["relative_gain"] is None


def test_bad_curves_fail_cleanly():
    with pytest.raises(DataError, match="at least one epoch"):
        convergence([5.0])
    with pytest.raises(DataError, match="NaN"):
        convergence([5.0, float("nan")])


def test_read_curve_keeps_the_last_point_of_a_rerun_epoch(tmp_path):
    log = tmp_path / "train_log.jsonl"
    lines = [{"epoch": -1, "step": 0, "dev": {"rsum": 5.0}}, {"epoch": 0, "step": 3, "loss": 1.0},
             {"epoch": 0, "step": 4, "dev": {"rsum": 50.0}}, {"epoch": 1, "step": 8, "dev": {"rsum": 70.0}},
             {"epoch": 1, "step": 8, "dev": {"rsum": 71.0}}]  # epoch 1 re-run after a resume
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    points = read_dev_curve(log)
    assert [p["rsum"] for p in points] == [5.0, 50.0, 71.0]
    summary = curve_summary(points, epochs=2)
    assert summary["curve"] == {"epoch": [-1, 0, 1], "step": [0, 4, 8], "rsum": [5.0, 50.0, 71.0]}
    with pytest.raises(DataError, match="expected dev points for epochs -1..2"):
        curve_summary(points, epochs=3)


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.mark.slow
def test_trainer_logs_dev_curve_without_changing_training(tiny_run_config, tmp_path):
    cfg = tiny_run_config(train={"epochs": 2})
    metrics = train_and_evaluate(cfg, tmp_path / "dev")
    conv = metrics["convergence"]
    assert conv["curve"]["epoch"] == [-1, 0, 1]
    # 80 training images x 5 captions / batch 32, drop_last: 12 steps per epoch; the first point is untrained
    assert conv["curve"]["step"] == [0, 12, 24]
    assert metrics["converged"] == conv["converged"] == convergence(conv["curve"]["rsum"])["converged"]
    assert conv["curve"]["rsum"][-1] > conv["curve"]["rsum"][0]  # the dev probe sees the model learn
    saved = json.loads((tmp_path / "dev" / "metrics.json").read_text())
    assert saved["convergence"]["curve"] == conv["curve"]
    # evaluating the dev split never touches the random state or the weights: same test metrics without it
    off = train_and_evaluate({**cfg, "data": {**cfg["data"], "dev_split": None}}, tmp_path / "off")
    assert off["protocols"] == metrics["protocols"]
    assert off["converged"] is None and "convergence" not in off


# ------------------------------------------------------------------------------------------------ the tables
def test_tables_mark_unconverged_runs_and_drop_delta_at_toy_scale():
    from pathlib import Path

    import pandas as pd

    from itrbench.experiments.plan import load_registry
    from itrbench.report.tables import RECALLS, build_table, load_paper_numbers, to_markdown

    repo = Path(__file__).resolve().parents[1]
    registry = load_registry(repo / "workflow" / "experiments.yaml")
    paper = load_paper_numbers(repo / "workflow" / "paper" / "coder.csv")
    rows = [{"experiment": "coder/table2/row1", "dataset_key": "f30k", "dataset": "toy-f30k", "protocol": "f30k_1k", "seed": s,
             **{m: 10.0 + s for m in RECALLS}, "rsum": 60.0 + 6 * s, "converged": c}
            for s, c in ((0, True), (1, False), (2, None))]
    table = build_table("coder_table2", registry, paper, pd.DataFrame(rows), seeds=[0, 1, 2])
    table = table.assign(key=table["row"]).set_index("key")
    assert table.loc["1", "status"] == "3/3 seeds, 1 not converged"
    assert table.loc["1", "rsum_mean"] == pytest.approx(66.0) and table.loc["1", "t2i_r1_diff"] == pytest.approx(11.0 - 58.6)
    toy = to_markdown(table.reset_index(), "t", "h", show_delta=False)
    full = to_markdown(table.reset_index(), "t", "h", show_delta=True)
    assert "| Δ |" not in toy and "| Δ |" in full and "reproduced" in toy


def test_learning_curves_read_from_records(tmp_path):
    import pandas as pd

    from itrbench.report.curves import plot_learning_curves, read_curves
    from itrbench.report.figures import save_figure

    rows = []
    for seed, conv in ((0, {"converged": True, "curve": {"epoch": [-1, 0, 1], "step": [0, 5, 10], "rsum": [3.0, 40.0, 41.0]}}),
                       (1, None)):  # seed 1: a run without a dev split has no curve
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"converged": None} if conv is None else {"convergence": conv}))
        rows.append({"experiment": "vsepp/baseline", "dataset_key": "f30k", "dataset": "toy-f30k", "method": "vsepp",
                     "seed": seed, "record_dir": str(d)})
    curves = read_curves(pd.DataFrame(rows))
    assert curves["step"].tolist() == [0, 5, 10] and curves["rsum"].tolist() == [3.0, 40.0, 41.0]
    assert set(curves["seed"]) == {0} and curves["converged"].all()
    save_figure(plot_learning_curves(pd.DataFrame(rows), None, {}), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
