"""Toy calibration: train one main row (VSE++ baseline, full CODER, full AsCL) and print its learning curve.

    OMP_NUM_THREADS=1 python bench/toy_calibration.py --method coder --dataset f30k --epochs 12
    ... --toy '{n_regions: 8}' --set train.lr=0.002 --set coder.momentum=0.9 --seed 1

The run config is what the pipeline resolves from the workflow config (default.yaml) for the main experiment of
the method (vsepp/baseline, coder/table1/coder, ascl/table1/ascl), plus `--set` overrides; the ToyScenes options
are the config's `datasets.<d>.toy` plus `--toy` (a YAML mapping). Data, text caches and concepts are built under
--work (reused across calls with the same options). Per epoch it prints the dev R@sum (the pipeline's convergence
signal) and, with --test-every, the test-protocol R@sum and t2i R@1. Costs are core-seconds of this process
(time.process_time: CPU of every thread), split into training, per-epoch evaluation and one-off preparation, so
numbers stay comparable while other jobs share the machine. Only main rows are offered on purpose: the toy is
calibrated for convergence, difficulty and cost, never against an ablation (docs/data.md, "Toy calibration").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

MAIN_ROWS = {"vsepp": "vsepp/baseline", "coder": "coder/table1/coder", "ascl": "ascl/table1/ascl"}
REPO = Path(__file__).resolve().parents[1]


def cpu() -> float:
    return time.process_time()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True, choices=sorted(MAIN_ROWS))
    p.add_argument("--dataset", default="f30k", choices=["f30k", "coco"])
    p.add_argument("--config", default=str(REPO / "workflow/config/default.yaml"))
    p.add_argument("--epochs", type=int, default=None, help="default: the config's train.epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", default="{}", help="YAML mapping of ToyScenes options over the config's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    p.add_argument("--test-every", type=int, default=0, help="also evaluate the test protocol every N epochs (0: last only)")
    p.add_argument("--work", default="/tmp/itrbench-calib", help="data / cache folder (reused)")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--profile", action="store_true", help="cProfile the training epochs (top 25 by own time)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import yaml

    t_start = cpu()
    import torch

    from itrbench.commands.train import parse_sets
    from itrbench.methods.coder.concepts import build_concepts
    from itrbench.config import deep_merge as merge, validate
    from itrbench.data.precomp import open_split
    from itrbench.data.toyscenes import generate_toyscenes
    from itrbench.evaluation import evaluate_model
    from itrbench.experiments.plan import load_registry, load_workflow_config, resolve_experiment
    from itrbench.training import Trainer, text_cache
    t_import = cpu() - t_start

    wf = load_workflow_config(args.config, REPO / "workflow/config/schema.yaml")
    registry = load_registry(REPO / wf["experiments"])
    entry = wf["datasets"][args.dataset]
    toy = {**entry.get("toy", {}), **(yaml.safe_load(args.toy) or {})}
    key = hashlib.sha1(json.dumps([entry["name"], wf.get("toy_seed", 0), toy], sort_keys=True).encode()).hexdigest()[:10]
    work = Path(args.work) / key
    root = work / "data"
    costs = {"import": t_import}

    t = cpu()
    if not (root / f"{entry['name']}_precomp").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        generate_toyscenes(root, entry["name"], seed=wf.get("toy_seed", 0), **toy)
    costs["data"] = cpu() - t

    config = resolve_experiment(wf, registry, MAIN_ROWS[args.method], args.dataset, seed=args.seed)
    sets = parse_sets(args.set)
    if args.epochs is not None:
        sets = merge(sets, {"train": {"epochs": args.epochs}})
    config = validate(merge(config, sets), "toy_calibration --set")
    config["data"]["root"] = str(root)
    # text caches depend on the captions only: share them across toys whose feature-side knobs differ
    caps = hashlib.sha1(b"".join(sorted(f.read_bytes() for f in (root / f"{entry['name']}_precomp").glob("*_caps.txt"))))
    config["text"]["cache_dir"] = str(Path(args.work) / "text" / caps.hexdigest()[:10])
    config["threads"] = 1
    if config["method"] == "coder" and config["coder"]["concepts"]:
        cdir = work / f"concepts-{config['coder']['num_concepts']}"
        t = cpu()
        if not cdir.is_dir():
            build_concepts(open_split(root, entry["name"], "train"), cdir, num_concepts=config["coder"]["num_concepts"],
                           word_vectors=config["coder"]["word_vectors"], max_images=config["data"]["max_train_images"])
        costs["concepts"] = cpu() - t
        config["coder"]["concept_dir"] = str(cdir)

    # text caches of the splits the run reads (the pipeline builds them in their own jobs)
    t = cpu()
    dev = open_split(root, entry["name"], "dev")
    dev_cache = text_cache(config, dev)
    costs["text_dev"] = cpu() - t

    out = work / "runs" / hashlib.sha1(json.dumps([config, args.seed], sort_keys=True, default=str).encode()).hexdigest()[:10]
    if out.exists():
        import shutil
        shutil.rmtree(out)
    t = cpu()
    trainer = Trainer(config, out)  # builds the train/eval text caches and, for AsCL, the positives' caches
    costs["setup"] = cpu() - t
    tr = config["train"]
    n_train = len(trainer.dataset)
    steps_per_epoch = n_train // tr["batch_size"] if n_train > tr["batch_size"] else 1
    print(f"# {config['method']} {entry['name']} seed {args.seed}: {n_train} captions, batch {tr['batch_size']}, "
          f"{steps_per_epoch} steps/epoch, toy {toy}", flush=True)
    print(f"# one-off core-s: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()), flush=True)

    def evaluate(split, cache, protocols):
        trainer.model.eval()
        with torch.no_grad():
            r = evaluate_model(trainer.model, split, protocols, device=trainer.device, token_cache=cache,
                               block_images=config["eval"]["block_images"], block_captions=config["eval"]["block_captions"])
        return r["protocols"][protocols[0]]

    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
    curve, train_cpu, dev_cpu, test_cpu = [], 0.0, 0.0, 0.0
    log = open(out / "train_log.jsonl", "w")
    for epoch in range(tr["epochs"]):
        t = cpu()
        if profiler:
            profiler.enable()
        trainer.train_epoch(epoch, log)
        trainer.model.on_epoch_end(trainer, epoch)
        if profiler:
            profiler.disable()
        train_cpu += cpu() - t
        t = cpu()
        d = evaluate(dev, dev_cache, ["f30k_1k"])
        dev_cpu += cpu() - t
        row = {"epoch": epoch + 1, "step": trainer.step, "train_cpu": round(train_cpu, 1), "dev_rsum": round(d["rsum"], 1)}
        last = epoch + 1 == tr["epochs"]
        if last or (args.test_every and (epoch + 1) % args.test_every == 0):
            t = cpu()
            m = evaluate(trainer.data.eval_split, trainer.data.eval_cache, config["data"]["protocols"][-1:])
            test_cpu = cpu() - t
            row.update(test_rsum=round(m["rsum"], 1), t2i_r1=round(m["t2i_r1"], 1), i2t_r1=round(m["i2t_r1"], 1))
        curve.append(row)
        print(json.dumps(row), flush=True)
    log.close()
    devs = [r["dev_rsum"] for r in curve]
    n_tail = max(1, round(0.25 * len(devs)))
    before = devs[-n_tail - 1] if len(devs) > n_tail else devs[0]
    gain = (devs[-1] - before) / max(before, 1e-9)
    summary = {
        "method": config["method"], "dataset": entry["name"], "seed": args.seed, "epochs": tr["epochs"],
        "steps": trainer.step, "train_cpu": round(train_cpu, 1), "dev_eval_cpu": round(dev_cpu, 1),
        "test_eval_cpu": round(test_cpu, 1), "train_cpu_per_step": round(train_cpu / max(trainer.step, 1), 4),
        "last25_gain": round(gain, 4), "converged": gain < 0.02, **{k: curve[-1].get(k) for k in ("test_rsum", "t2i_r1", "i2t_r1")},
        "dev_curve": devs, "toy": toy, "sets": args.set, "one_off": {k: round(v, 1) for k, v in costs.items()},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "dev_curve"}), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    if profiler:
        import pstats
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
