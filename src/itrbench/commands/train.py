"""`itrbench train --config RUN.yaml --out RUN_DIR`: train, then evaluate into RUN_DIR/metrics.json."""
from __future__ import annotations

import json

import yaml

from itrbench.config import load_config
from itrbench.errors import ConfigError


def parse_sets(pairs: list[str]) -> dict:
    """`--set train.epochs=3` -> {"train": {"epochs": 3}} (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected KEY=VALUE, e.g. train.epochs=3")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run(args) -> int:
    from itrbench.training import train_and_evaluate

    config = load_config(args.config, parse_sets(args.set))
    metrics = train_and_evaluate(config, args.out)
    if not metrics:  # a torchrun rank other than 0: rank 0 evaluates and reports
        return 0
    print(json.dumps({p: {k: round(v, 2) for k, v in m.items()} for p, m in metrics["protocols"].items()}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a method from a run config, then evaluate it")
    p.add_argument("--config", required=True, help="run config YAML (see src/itrbench/schemas/run.yaml)")
    p.add_argument("--out", required=True, help="run folder (config.yaml, checkpoint.pt, metrics.json)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=3")
    p.set_defaults(func=run)
