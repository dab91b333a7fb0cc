"""`itrbench evaluate --run RUN_DIR`: re-evaluate a trained run (rewrites metrics.json)."""
from __future__ import annotations

import json


def run(args) -> int:
    from itrbench.training import evaluate_run, load_trained

    config, model, data, device, wall = load_trained(args.run)
    metrics = evaluate_run(config, model, data, data.context.work_dir, device, wall)
    print(json.dumps({p: {k: round(v, 2) for k, v in m.items()} for p, m in metrics["protocols"].items()}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run folder on its protocols")
    p.add_argument("--run", required=True, help="run folder written by `itrbench train`")
    p.set_defaults(func=run)
