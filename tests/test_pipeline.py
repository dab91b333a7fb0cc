"""The Snakemake workflow: lint, dry-runs (default, paper on fixture paths, SLURM), config errors, dedupe and reruns.

Most tests run Snakemake in a temporary working directory. `test_dag_logic_*` executes the real DAG with a stand-in
`itrbench` on PATH that writes each rule's outputs instantly (the bookkeeping rules are real), so the rerun logic is
tested in seconds. `test_tiny_dag` runs the real thing on workflow/config/tiny.yaml (`pytest -k tiny_dag`).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from itrbench import methods
from itrbench.experiments import layout, plan as reg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "workflow" / "config"
SCHEMA = CONFIGS / "schema.yaml"
BIN = Path(sys.executable).parent


def snakemake(*args, cwd=None, env=None, timeout=600):
    """Run snakemake on the repository's Snakefile; returns (returncode, stdout + stderr)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args]
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a (dry-)run."""
    stats = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m.group(1) != "total"}


def jobs_of(output: str, rule: str) -> list[str]:
    """The printed blocks of every job of `rule` in a dry-run."""
    return [b for b in re.split(r"\n(?=\[[^\]]+\]\n)", output) if re.search(rf"^(local)?rule {rule}:", b, re.M)]


def records_jobs(output: str) -> dict[str, set[str]]:
    """{records rule: the record folders its job writes} of a dry-run (one job per rule: they are defined in a loop)."""
    jobs = {}
    for block in jobs_of(output, r"records_\w+"):
        name = re.search(r"rule (records_\w+):", block).group(1)
        outputs = re.search(r"^\s+output: (.*)$", block, re.M).group(1).split(", ")
        jobs[name] = {str(Path(p).parent) for p in outputs}
    return jobs


def record_readers(output: str) -> dict[str, frozenset[str]]:
    """{record folder: the table / claims / figure jobs whose inputs list its metrics.json} of a dry-run."""
    readers = {}
    for rule in ("table", "claims", "figure"):
        for block in jobs_of(output, rule):
            job = re.search(r"^\s+output: ([^,\n]*)", block, re.M).group(1)
            for path in re.search(r"^\s+input: (.*)$", block, re.M).group(1).split(", "):
                if path.endswith("/metrics.json") and not path.startswith("results/runs/"):
                    readers.setdefault(str(Path(path).parent), set()).add(job)
    return {k: frozenset(v) for k, v in readers.items()}


def table_runs(config_path, **overrides):
    """The plan's runs that the `tables` target needs (its tables' rows and the claims' contrasts), and the registry."""
    wf = {**reg.load_workflow_config(config_path, SCHEMA), **overrides}
    registry = reg.load_registry(overrides.get("experiments") or REPO / wf["experiments"])
    plan = reg.plan_runs(wf, registry)
    table_exps = {n for t in registry["tables"] for n in plan.experiments_of_table(t)}
    claims = yaml.safe_load((REPO / wf["claims"]).read_text())["claims"]  # `tables` builds tables/claims.md too
    table_exps |= {e for c in claims for e in c["toy"]}
    return [r for r in plan.runs if r.experiment in table_exps], registry


def expected_trainings(config_path, **overrides) -> set[tuple[str, int]]:
    return {(r.hash, r.seed) for r in table_runs(config_path, **overrides)[0]}


@pytest.mark.slow
def test_lint():
    rc, out = snakemake("--lint", cwd=REPO)
    assert rc == 0, out
    assert "Congratulations" in out


@pytest.mark.slow
def test_dry_run_default_one_training_per_unique_run(tmp_path):
    rc, out = snakemake("-n", "tables", "--directory", str(tmp_path))
    assert rc == 0, out
    counts = job_counts(out)
    runs, registry = table_runs(CONFIGS / "default.yaml")
    want = {(r.hash, r.seed) for r in runs}
    assert counts["train"] == len(want)  # one training per unique (config, seed), shared by the experiments
    trained = {(re.search(r"hash=(\w+)", b).group(1), int(re.search(r"seed=(\d+)", b).group(1))) for b in jobs_of(out, "train")}
    assert trained == want
    # one record per (experiment, data set, seed) reported in a table or a claim, written by few records jobs: one per
    # (data set, method, readers), so a table that needs one record of a job needs all of them (nothing extra trains)
    records = records_jobs(out)
    folders = [f for fs in records.values() for f in fs]
    assert sorted(folders) == sorted(r.experiment_dir for r in runs)
    readers = record_readers(out)  # the tables and claims of this DAG; the figures (not targets here) from the registry

    def group(folder):  # results/<dataset>/<method>/<experiment>/seed<k>
        parts = Path(folder).parts
        return parts[1], parts[2], readers[folder] | set(registry["experiments"]["/".join(parts[3:-1])]["figures"])

    assert len(records) == len({group(f) for f in folders}) < len(runs) / 4
    for fs in records.values():
        assert len({group(f) for f in fs}) == 1, fs
    assert counts["table"] == len(registry["tables"]) and counts["claims"] == 1
    datasets = {r.dataset for r in runs}
    concept_dirs = {methods.run_inputs(r.config)["concepts"]["dir"] for r in runs if "concepts" in methods.run_inputs(r.config)}
    assert counts["toy_data"] == len(datasets) and counts["cache_text"] == 3 * len(datasets)  # train, eval, dev splits
    assert counts["concepts"] == len(concept_dirs) >= 1
    assert "validate_data" not in counts
    for block in jobs_of(out, "train"):
        assert "gpu=0" in block  # the toy config asks for no GPU


def _paper_fixture(tmp_path):
    """Empty stand-ins for the user's real data (a dry-run only checks that inputs exist)."""
    data = tmp_path / "real"
    for ds, splits in (("f30k", ["train", "test"]), ("coco", ["train", "testall"])):
        folder = data / f"{ds}_precomp"
        folder.mkdir(parents=True)
        for s in splits:
            for kind in ("ims.npy", "caps.txt", "ids.txt"):
                (folder / f"{s}_{kind}").touch()
            if ds == "coco":
                (folder / f"{s}_global.npy").touch()  # coco has global features; f30k computes them from images
    (tmp_path / "images").mkdir()
    (tmp_path / "glove.txt").touch()
    return {"ITRBENCH_DATA": str(data), "ITRBENCH_GLOVE": str(tmp_path / "glove.txt"),
            "ITRBENCH_F30K_IMAGES": str(tmp_path / "images"), "ITRBENCH_COCO_IMAGES": ""}


def all_trainings(config_path):
    wf = reg.load_workflow_config(config_path, SCHEMA)
    plan = reg.plan_runs(wf, reg.load_registry(REPO / wf["experiments"]))
    return {(r.hash, r.seed) for r in plan.runs}


@pytest.fixture(scope="module")
def paper_slurm_dry_run(tmp_path_factory):
    """One dry-run of the paper config (fixture data paths from env vars) through the SLURM profile."""
    tmp_path = tmp_path_factory.mktemp("paper")
    profile = REPO / "workflow" / "profiles" / "slurm"
    env = {**_paper_fixture(tmp_path), "ITRBENCH_SLURM_ACCOUNT": "acct42", "ITRBENCH_SLURM_PARTITION": "cpuq",
           "ITRBENCH_SLURM_GPU_PARTITION": "gpuq", "ITRBENCH_GPU_MODEL": "a100"}
    rc, out = snakemake("--configfile", str(CONFIGS / "paper.yaml"), "--profile", str(profile), "--executor", "slurm",
                        "--jobs", "4", "-n", "--directory", str(tmp_path / "wd"), env=env)
    assert rc == 0, out
    return tmp_path, out


@pytest.mark.slow
def test_dry_run_paper_against_fixture_paths(paper_slurm_dry_run):
    tmp_path, out = paper_slurm_dry_run
    counts = job_counts(out)
    assert counts["validate_data"] == 2 and "toy_data" not in counts and "cache_text" not in counts  # BERT fine-tuned
    assert counts["global_features"] == 2  # f30k train + test, from the raw images; coco has them
    assert counts["train"] == len(all_trainings(CONFIGS / "paper.yaml"))  # default target `all`: tables + figures
    registry = reg.load_registry(REPO / "workflow" / "experiments.yaml")
    assert counts["figure"] == len(registry["figures"]) and counts["table"] == len(registry["tables"])
    assert all("itrbench pin-gpu --gpus 1 -- itrbench train --config" in b for b in jobs_of(out, "train"))
    assert str(tmp_path / "glove.txt") in "".join(jobs_of(out, "concepts"))
    assert str(tmp_path / "real" / "f30k_precomp" / "train_ims.npy") in "".join(jobs_of(out, "validate_data"))


def test_slurm_profile_dry_run_shows_gpu_resources(paper_slurm_dry_run, monkeypatch):
    profile = REPO / "workflow" / "profiles" / "slurm"
    assert (profile / "config.yaml").read_text() == (profile / "profile.yaml").read_text()
    tmp_path, out = paper_slurm_dry_run
    train = jobs_of(out, "train")
    assert train
    for var, value in (("ITRBENCH_DATA", tmp_path / "real"), ("ITRBENCH_GLOVE", tmp_path / "glove.txt"),
                       ("ITRBENCH_F30K_IMAGES", tmp_path / "images"), ("ITRBENCH_COCO_IMAGES", "")):
        monkeypatch.setenv(var, str(value))  # the dry-run's paths: run hashes depend on them
    wf = reg.load_workflow_config(CONFIGS / "paper.yaml", SCHEMA)
    runs = {r.hash: r for r in reg.plan_runs(wf, reg.load_registry(REPO / wf["experiments"])).runs}
    asked = set()
    for block in train:
        res = re.search(r"resources: (.*)", block).group(1)
        run = runs[re.search(r"hash=(\w+)", block).group(1)]
        cost = {**wf["resources"]["train"], **wf["resources"]["train_cost"].get(run.method, {}).get(run.dataset_key, {})}
        asked.add((cost["runtime"], cost["mem_mb"]))
        for want in ("gpu=1", "gpu_model=a100", "cpus_per_gpu=8", "slurm_account=acct42", "slurm_partition=gpuq",
                     f"runtime={cost['runtime']},", f"mem_mb={cost['mem_mb']},"):
            assert want in res, (want, res)
    assert len(asked) > 3  # per (method, data set), not one request for all
    for block in jobs_of(out, "table") + jobs_of(out, "validate_data"):
        res = re.search(r"resources: (.*)", block).group(1)
        assert "gpu=" not in res and "slurm_partition=cpuq" in res and "slurm_account=acct42" in res


@pytest.mark.slow
def test_misspelt_config_key_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny.yaml").read_text().replace("    eval_split: test\n", "    eval_splt: test\n"))
    wd = tmp_path / "wd"
    rc, out = snakemake("--configfile", str(bad), "--cores", "1", "tables", "--directory", str(wd))
    assert rc != 0
    assert f"{bad}: invalid workflow config: unknown key 'datasets.f30k.eval_splt' (did you mean 'eval_split'?)" in out
    assert not (wd / "results").exists() and not (wd / "data").exists()


@pytest.mark.slow
def test_misspelt_override_key_fails_naming_registry(tmp_path):
    registry = tmp_path / "experiments.yaml"
    registry.write_text((REPO / "workflow" / "experiments.yaml").read_text().replace(
        "overrides: {coder: {pgc: false}}", "overrides: {coder: {pgc: false}, train: {epochz: 3}}"))
    rc, out = snakemake("--cores", "1", "tables", "--config", f"experiments={registry}", "--directory", str(tmp_path / "wd"))
    assert rc != 0
    assert f"{registry} (experiments/coder/table2/row4/overrides): unknown key 'train.epochz'" in out
    assert not (tmp_path / "wd" / "results").exists()


def test_figure_inputs_follow_the_registrys_needs_not_the_figure_name(tmp_path):
    """common.smk builds a figure's extra inputs from its `needs` in experiments.yaml: moved from AsCL Fig. 4 to the
    learning curves, the alignment/uniformity jobs follow (only the runs evaluating coco_5k), and captions too."""
    data = yaml.safe_load((REPO / "workflow" / "experiments.yaml").read_text())
    data["figures"]["ascl_fig4_alignment_uniformity"]["needs"] = []
    data["figures"]["toy_learning_curves"]["needs"] = [{"input": "alignment_uniformity", "protocol": "coco_5k"},
                                                       {"input": "captions"}]
    registry = tmp_path / "experiments.yaml"
    registry.write_text(yaml.safe_dump(data, allow_unicode=True))
    rc, out = snakemake("-n", "all", "--configfile", str(CONFIGS / "tiny.yaml"), "--config", f"experiments={registry}",
                        "--directory", str(tmp_path / "wd"))
    assert rc == 0, out
    wf = {**reg.load_workflow_config(CONFIGS / "tiny.yaml", SCHEMA), "experiments": str(registry)}
    plan = reg.plan_runs(wf, reg.load_registry(registry))
    curves = plan.runs_of(plan.experiments_of_figure("toy_learning_curves"))
    coco_5k = {r.path(layout.RECORD_EXTRAS["alignment_uniformity"]) for r in curves if "coco_5k" in r.config["data"]["protocols"]}
    assert coco_5k and len(coco_5k) < len(curves)
    measured = {re.search(r"^\s+output: (.*)$", b, re.M).group(1) for b in jobs_of(out, "alignment_uniformity")}
    assert measured == coco_5k
    inputs = {re.search(r"wildcards: figure=(\w+)", b).group(1): re.search(r"^\s+input: (.*)$", b, re.M).group(1).split(", ")
              for b in jobs_of(out, "figure")}
    assert coco_5k <= set(inputs["toy_learning_curves"])
    assert {f"data/toy/{r.dataset}_precomp" for r in curves} <= set(inputs["toy_learning_curves"])
    assert not any(p.endswith("alignment_uniformity.json") for p in inputs["ascl_fig4_alignment_uniformity"])


FAKE_ITRBENCH = '''#!{python}
"""Stand-in for `itrbench` in the DAG-logic test: writes each command's outputs at once, logs trainings."""
import json, os, sys
from pathlib import Path
import yaml
argv = sys.argv[1:]
opt = lambda name: argv[argv.index(name) + 1]
cmd = argv[0]
with open(os.environ["FAKE_ITRBENCH_LOG"], "a") as log:
    log.write(" ".join(argv) + "\\n")
if cmd == "train":
    cfg = yaml.safe_load(Path(opt("--config")).read_text())
    out = Path(opt("--out"))
    out.mkdir(parents=True, exist_ok=True)
    vals = dict(i2t_r1=10.0, i2t_r5=20.0, i2t_r10=30.0, t2i_r1=5.0, t2i_r5=15.0, t2i_r10=25.0, rsum=105.0)
    (out / "metrics.json").write_text(json.dumps({{"protocols": {{p: vals for p in cfg["data"]["protocols"]}}}}))
elif cmd == "toy":
    folder = Path(opt("--out")) / (opt("--dataset") + "_precomp")
    folder.mkdir(parents=True)
    (folder / "train_caps.txt").write_text("a caption\\n")
elif cmd == "cache-text":
    Path(opt("--out")).parent.mkdir(parents=True, exist_ok=True)
    Path(opt("--out")).write_text("x")
    Path(opt("--out")[:-len(".npy")] + ".len.npy").write_text("x")
elif cmd == "concepts":
    Path(opt("--out")).mkdir(parents=True)
elif cmd in ("table", "claims"):
    Path(opt("--md")).write_text("md")
    Path(opt("--csv")).write_text("csv")
    if cmd == "table":
        Path(opt("--html")).write_text("html")
else:
    sys.exit("unexpected command " + cmd)
'''


def _fake_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "itrbench"
    fake.write_text(FAKE_ITRBENCH.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    return {"PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_ITRBENCH_LOG": str(log)}, log


@pytest.mark.slow
def test_dag_logic_each_unique_run_trains_once_then_nothing_then_only_the_changed_one(tmp_path):
    # f30k only, two seeds; CODER's full model is reported by coder/table1/coder and coder/table2/row5 (one run)
    cfg = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    del cfg["datasets"]["coco"]
    cfg["seeds"] = [0, 1]
    cfg["only"] = ["vsepp/baseline", "coder/table1/coder", "coder/table2/*"]
    cfg_path = tmp_path / "dag.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env, log = _fake_env(tmp_path)
    wd = tmp_path / "wd"

    rc, out = snakemake("--configfile", str(cfg_path), "--cores", "2", "tables", "--directory", str(wd), env=env)
    assert rc == 0, out
    trains = [line.split() for line in log.read_text().splitlines() if line.startswith("train ")]
    configs = [t[t.index("--config") + 1] for t in trains]
    # one training per unique config and seed (row5 = table1 CODER share one)
    assert len(configs) == len(set(configs)) == len(expected_trainings(cfg_path)) < len(table_runs(cfg_path)[0])
    assert {(Path(c).parent.name, int(Path(c).name.split("seed")[1].split(".")[0])) for c in configs} == \
        expected_trainings(cfg_path)
    # every experiment gets its record; the two CODER-full records point at one run folder
    full = [yaml.safe_load((wd / f"results/toy-f30k/coder/{e}/seed0/run.json").read_text())["run_dir"]
            for e in ("coder/table1/coder", "coder/table2/row5")]
    assert full[0] == full[1] and (wd / full[0] / "metrics.json").is_file()

    rc, out = snakemake("--configfile", str(cfg_path), "-n", "tables", "--directory", str(wd), env=env)
    assert rc == 0 and "Nothing to be done" in out, out

    registry = tmp_path / "experiments.yaml"
    registry.write_text((REPO / "workflow" / "experiments.yaml").read_text().replace(
        "overrides: {coder: {concepts: false, pgc: false}}", "overrides: {coder: {concepts: false, pgc: false}, train: {lr: 0.002}}"))
    rc, out = snakemake("--configfile", str(cfg_path), "--config", f"experiments={registry}", "-n", "tables",
                        "--directory", str(wd), env=env)
    assert rc == 0, out
    counts = job_counts(out)
    # row 3's records (two seeds) are rewritten by the one records job of its group
    assert counts["train"] == 2 and "run_config" not in counts and len(records_jobs(out)) == 1
    assert {f for fs in records_jobs(out).values() for f in fs} >= {f"results/toy-f30k/coder/coder/table2/row3/seed{k}" for k in (0, 1)}
    new_hash = reg.config_hash(reg.resolve_experiment(
        {**reg.load_workflow_config(cfg_path, SCHEMA), "experiments": str(registry)}, reg.load_registry(registry),
        "coder/table2/row3", "f30k"))
    assert {re.search(r"hash=(\w+)", b).group(1) for b in jobs_of(out, "train")} == {new_hash}


@pytest.mark.slow
def test_tiny_dag(tmp_path):
    """The whole DAG for real on the tiny config in a fresh clone, through tables and figures (about 3 minutes on 2
    cores): its outputs go to results/tiny/, the committed tables/ and figures/ stay untouched, `git status` clean."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True)
    cmd = [str(BIN / "snakemake"), "--cores", "2", "all", "--configfile", "workflow/config/tiny.yaml", "--show-failed-logs"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(clone / "src")}
    run = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "itrbench: config tiny: tables in results/tiny/tables/, figures in results/tiny/figures/" in out
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True).stdout
    assert status == "", status
    wd = clone / "results" / "tiny"
    t1 = (wd / "tables" / "coder_table1.md").read_text()
    assert re.search(r"\| CODER \| paper \|.*\| 1/1 seeds[^|]*\|", t1) and "| reported only |" in t1
    assert re.search(r"\| VSE\+\+ \[10\] \(2018\) \| paper \|.*\| reported only \|", t1)
    assert re.search(r"\| VSE∞ \(GPO \+ BTR\) \| paper \|.*\| 1/1 seeds[^|]*\|", t1)
    assert re.search(r"\| SCAN \[28\] \(2018\) \| paper \|.*\| 1/1 seeds[^|]*\|", t1)
    a1 = (wd / "tables" / "ascl_table1.md").read_text()
    assert re.search(r"\| AsCL \(OURS\) \| paper \|.*\| 1/1 seeds[^|]*\|", a1)
    assert re.search(r"\| SCAN \[5\] \| paper \|.*\| 1/1 seeds[^|]*\|", a1)
    t2 = (wd / "tables" / "coder_table2.md").read_text()
    # row 5 of CODER Table 2 is the full model: the same run as Table 1's CODER, read from there; rows 1-4 not run
    assert "| not run |" in t2 and re.search(r"\| \+ L_PGC \(full CODER\) \| paper \|.*\| 1/1 seeds[^|]*\|", t2), t2
    claims = (wd / "tables" / "claims.md").read_text()  # tiny runs only the main rows: every claim is `not run`
    assert "32 claims: 0 agrees, 0 contradicts, 0 inconclusive, 32 not run" in claims and "CODER Table 2, #1 → #2" in claims
    n_trainings = len(all_trainings(clone / "workflow" / "config" / "tiny.yaml"))  # its experiments x data sets x seed
    runs = sorted((clone / "results" / "runs").glob("*/seed0/metrics.json"))
    assert len(runs) == n_trainings  # the trainer's hash is the folder's
    assert all(json.loads(p.read_text())["config_hash"] == p.parent.parent.name for p in runs)
    for name in reg.load_registry(clone / "workflow" / "experiments.yaml")["tables"]:
        assert (wd / "tables" / f"{name}.csv").read_text().startswith("# config=tiny scale=toy commit=")
        assert "<table" in (wd / "tables" / f"{name}.html").read_text()
    assert len(list((wd / "figures").glob("*.png"))) == len(reg.load_registry(clone / "workflow" / "experiments.yaml")["figures"])
    logs = list((clone / "results" / "runs").glob("*/seed0/train.log"))
    # no epoch progress bar in training logs (transformers' own "Loading weights" bar still writes \r: not ours)
    assert len(logs) == n_trainings and not any(re.search(r"\repoch \d", p.read_text(errors="replace")) for p in logs)
    dry = subprocess.run(cmd[:1] + ["-n", "all", "--configfile", "workflow/config/tiny.yaml"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    # every job left a benchmark file; `itrbench budget` sums them per rule kind, the total last
    bench = clone / "results" / "benchmarks"
    assert len(list((bench / "train").glob("*.tsv"))) == n_trainings and list((bench / "cache_text").rglob("*.tsv"))
    budget = subprocess.run([sys.executable, "-m", "itrbench.cli", "budget", str(bench)], capture_output=True,
                            text=True, timeout=120)
    assert budget.returncode == 0, budget.stderr
    last = budget.stdout.strip().splitlines()[-1]
    assert last.startswith("core_seconds=") and float(last.split("=")[1]) > 1.0, budget.stdout


def test_pin_gpu_gives_each_job_a_free_device(tmp_path):
    """Two devices, one held by another job: the command runs on the other one; with as many as asked, no locking."""
    import fcntl

    env = {**os.environ, "ITRBENCH_GPU_LOCK_DIR": str(tmp_path), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    show = ["--", sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    held = open(tmp_path / "gpu3.lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running job holds device 3
    try:
        out = subprocess.run([sys.executable, "-m", "itrbench.cli", "pin-gpu", "--gpus", "1", "--ids", "3,5", *show],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "5"
    finally:
        held.close()
    env["CUDA_VISIBLE_DEVICES"] = "7"  # e.g. SLURM gave this job one GPU: used as is
    out = subprocess.run([sys.executable, "-m", "itrbench.cli", "pin-gpu", "--gpus", "1", *show],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "7", out.stderr
    out = subprocess.run([sys.executable, "-m", "itrbench.cli", "pin-gpu", "--gpus", "2", *show],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "2 GPU(s) requested, 1 visible" in out.stderr


@pytest.mark.slow
def test_config_file_given_as_target_is_one_clear_line(tmp_path):
    """`snakemake --cores 2 workflow/config/tiny.yaml` (a config where a target belongs): one line with the working order."""
    rc, out = snakemake("-n", str(CONFIGS / "tiny.yaml"), "--directory", str(tmp_path))
    assert rc != 0
    assert f"{CONFIGS / 'tiny.yaml'} is a config file given as a target: write targets before --configfile" in out, out


@pytest.mark.slow
def test_outputs_are_per_config_and_only_default_publishes(tmp_path):
    """tiny writes results/tiny/ only; the default config's `tables figures` also copy to tables/ and figures/."""
    rc, out = snakemake("-n", "tables", "figures", "--configfile", str(CONFIGS / "tiny.yaml"), "--directory", str(tmp_path))
    assert rc == 0, out
    assert "publish_table" not in out and "publish_figure" not in out
    assert "results/tiny/tables/coder_table1.html" in out and "results/tiny/figures/coder_fig3_batch_size.png" in out
    rc, out = snakemake("-n", "tables", "figures", "--directory", str(tmp_path))
    assert rc == 0, out
    counts = job_counts(out)
    registry = reg.load_registry(REPO / "workflow" / "experiments.yaml")
    assert counts["publish_table"] == 2 * (len(registry["tables"]) + 1)  # + claims and counts["publish_figure"] == len(registry["figures"])
    rc, out = snakemake("-n", "--directory", str(tmp_path))  # the default target `all` writes results/default/ only
    assert rc == 0 and "publish_" not in out, out
