"""Run-config validation: defaults filled, unknown keys and wrong types named with the file."""
import pytest

from itrbench.cli import main
from itrbench.config import config_hash, deep_merge, load_config, validate
from itrbench.errors import ConfigError


def test_defaults_filled():
    cfg = validate({"method": "vsepp"})
    assert cfg["train"]["epochs"] == 10 and cfg["model"]["aggregator"] == "gpo"
    assert cfg["data"]["protocols"] == ["f30k_1k"]
    assert isinstance(cfg["coder"], dict) and isinstance(cfg["ascl"], dict)


@pytest.mark.parametrize("bad, needle", [
    ({"trian": {}}, "unknown key 'trian'"),
    ({"train": {"epocs": 2}}, "unknown key 'train.epocs'"),
    ({"train": {"epochs": "three"}}, "key 'train.epochs' must be of type integer"),
    ({"model": {"aggregator": "sum"}}, "key 'model.aggregator' must be one of"),
    ({"train": {"lr": -1.0}}, "train.lr"),
])
def test_bad_keys_named(bad, needle):
    with pytest.raises(ConfigError) as err:
        validate(bad, "my.yaml")
    assert str(err.value).startswith("my.yaml: ") and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_reports_one_line_and_leaves_nothing(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: vsepp\ntrain:\n  epoch: 3\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and "train.epoch" in err[0]
    assert not out.exists()


def test_non_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_merge_and_hash():
    a = validate({"train": {"epochs": 2}})
    b = validate(deep_merge({"train": {"epochs": 3}}, {"train": {"epochs": 2}}))
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(validate({"train": {"epochs": 3}}))
    assert config_hash(a) == config_hash({**a, "seed": 7})
