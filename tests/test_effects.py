"""Paired per-seed ablation effects against hand-computed numbers."""
import pandas as pd
import pytest

from itrbench.errors import DataError
from itrbench.report.effects import paired_effects


def records():
    rows = []
    for exp, values in {"base": [50, 60, 55], "variant": [53, 61, 60]}.items():
        for seed, v in enumerate(values):
            rows.append({"experiment": exp, "dataset_key": "f30k", "protocol": "f30k_1k", "seed": seed, "rsum": v})
    rows.append({"experiment": "variant", "dataset_key": "f30k", "protocol": "coco_5k", "seed": 0, "rsum": 1.0})
    return pd.DataFrame(rows)


def test_paired_differences_by_hand():
    out = paired_effects(records(), [("base", "variant")], "f30k_1k").iloc[0]
    # differences 3, 1, 5: mean 3, sample std 2; base std = 5, variant std = sqrt(19)
    assert out["diff_mean"] == pytest.approx(3.0)
    assert out["diff_std"] == pytest.approx(2.0)
    assert out["base_std"] == pytest.approx(5.0)
    assert out["variant_std"] == pytest.approx(19 ** 0.5)
    assert out["wins"] == 3 and out["n_seeds"] == 3


def test_missing_experiment_is_named():
    with pytest.raises(DataError, match="coco_5k records for base"):
        paired_effects(records(), [("base", "variant")], "coco_5k")
