"""`itrbench resolve`: show what the pipeline would train: resolved run configs and their hashes."""
from __future__ import annotations

import sys
from pathlib import Path


def run(args) -> int:
    from itrbench.errors import ConfigError
    from itrbench.experiments.plan import load_registry, load_workflow_config, plan_runs, resolve_experiment, run_config_text
    from itrbench.utils import atomic_path

    wf = load_workflow_config(args.config, Path(args.repo) / "workflow" / "config" / "schema.yaml")
    registry_path = args.registry or str(Path(args.repo) / wf["experiments"])
    registry = load_registry(registry_path)
    if args.experiment:
        if args.dataset is None:
            raise ConfigError("--experiment needs --dataset (f30k or coco)")
        config = resolve_experiment(wf, registry, args.experiment, args.dataset, seed=args.seed, wf_source=args.config)
        text = run_config_text(config, args.seed)
        if args.out:
            with atomic_path(args.out) as tmp:
                Path(tmp).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    plan = plan_runs(wf, registry, wf_source=args.config)
    seen: dict[str, str] = {}
    for r in plan.runs:
        if r.seed != plan.seeds[0]:
            continue
        first = seen.setdefault(r.hash, r.experiment)
        same = "" if first == r.experiment else f"  (= {first})"
        print(f"{r.hash}  {r.dataset:<10} {r.method:<6} {r.experiment}{same}")
    print(f"{len(plan.runs)} experiment runs, {len(plan.unique_runs)} trainings "
          f"({len(seen)} configs x {len(plan.seeds)} seeds)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("resolve", help="list the pipeline's runs (config hashes) or print one resolved run config")
    p.add_argument("--config", default="workflow/config/default.yaml", help="workflow config")
    p.add_argument("--registry", default=None, help="experiment registry (default: the config's `experiments`)")
    p.add_argument("--repo", default=".", help="repository root the config's relative paths start from")
    p.add_argument("--experiment", help="print the resolved run config of this experiment")
    p.add_argument("--dataset", help="logical data set of --experiment: f30k or coco")
    p.add_argument("--seed", type=int, default=0, help="seed written into the run config (default: %(default)s)")
    p.add_argument("--out", help="write the run config here instead of printing it")
    p.set_defaults(func=run)
