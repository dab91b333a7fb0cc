# Shared set-up: config loading and validation, the experiment plan, and the input/param functions of the rules.
# Functions only (no rules). Paths under results/ come from itrbench.experiments.layout (spelt there once), the
# runs from the registry's plan; figures' extra inputs from what each declares (experiments.yaml `needs`).
import os
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Import the package from this checkout (the rules' `itrbench` commands should be the same install: pip install -e ".[pipeline]").
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from itrbench.config import check_globs, coerce_to_schema  # noqa: E402
from itrbench import methods  # noqa: E402
from itrbench.errors import ConfigError  # noqa: E402
from itrbench.joblogs import print_job_errors  # noqa: E402,F401  (train.smk's onerror)
from itrbench.experiments import layout, plan as reg  # noqa: E402
from itrbench.text import token_cache_path  # noqa: E402


if not workflow.overwrite_configfiles:
    configfile: os.path.join(workflow.basedir, "workflow", "config", "default.yaml")


CONFIG_SOURCE = " + ".join([str(p) for p in workflow.configfiles] + (["--config"] if workflow.config_settings.config else []))

# `--config seeds=[0,1]` arrives as strings (Snakemake parses nested values with YAML's BaseLoader), and PyYAML reads
# `lr: 1e-3` as a string: read numbers as numbers wherever the schema asks for one.
with open(os.path.join(workflow.basedir, "workflow", "config", "schema.yaml")) as _f:
    config.update(coerce_to_schema(dict(config), yaml.safe_load(_f)))

try:
    validate(config, "../config/schema.yaml")
except WorkflowError as err:
    raise WorkflowError(reg.workflow_error_line(err, f"{CONFIG_SOURCE}: invalid workflow config")) from None


def repo_path(path):
    """A path from the config, relative to the repository (the Snakefile's folder) unless absolute."""
    return path if os.path.isabs(path) else os.path.join(workflow.basedir, path)


try:
    reg.check_method_sections(config, CONFIG_SOURCE)
    WF = reg.expand_env(config, CONFIG_SOURCE)
    REGISTRY_FILE = repo_path(WF["experiments"])
    REGISTRY = reg.load_registry(REGISTRY_FILE)
    # A misspelt `only` entry would select nothing and a dead `skip` glob drop nothing, both silently: refuse them.
    check_globs(WF.get("only", []), REGISTRY["experiments"], "only", f"experiment in {WF['experiments']}", CONFIG_SOURCE)
    check_globs(WF.get("skip", []), [f"{ds}:{name}" for name, exp in REGISTRY["experiments"].items()
                                     for ds in exp["datasets"] if ds in WF["datasets"]],
                "skip", "'<dataset>:<experiment>' of this config", CONFIG_SOURCE)
    PLAN = reg.plan_runs(WF, REGISTRY, CONFIG_SOURCE)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# Concrete data set name (toy-f30k, coco, ...) -> its workflow-config entry.
DATASETS = {entry["name"]: entry for entry in WF["datasets"].values()}
METHOD_NAMES = methods.names()  # the method plugins (itrbench/methods/<name>/)


def one_of(values):
    """A wildcard constraint matching exactly these strings."""
    values = sorted(set(values))
    return "|".join(re.escape(v) for v in values) if values else "(?!)"


# ------------------------------------------------------------------------------------------------- data
def data_ready(dataset):
    """What a job needs before it may read `dataset`: the generated toy folder, or the validation report."""
    entry = DATASETS[dataset]
    if entry["source"] == "toy":
        return f"{entry['root']}/{dataset}_precomp"
    return layout.DATA_VALIDATED.format(dataset=dataset)


def real_split_files(wildcards):
    entry = DATASETS[wildcards.dataset]
    folder = f"{entry['root']}/{wildcards.dataset}_precomp"
    return [f"{folder}/{s}_{kind}" for s in (entry["train_split"], entry["eval_split"]) for kind in ("ims.npy", "caps.txt")]


def toy_roots():
    return [e["root"] for e in DATASETS.values() if e["source"] == "toy"]


def images_folder(entry):
    return entry.get("images") or None  # "" (an unset ${VAR:-}) means none


def global_feature_files(config):
    """A method needing global features reads one per image; toy folders hold them, real data may need `global-features`."""
    entry = DATASETS[config["data"]["dataset"]]
    if not methods.run_inputs(config).get("global_features") or entry["source"] == "toy":
        return []
    folder = f"{entry['root']}/{entry['name']}_precomp"
    return [f"{folder}/{s}_global.npy" for s in (entry["train_split"], entry["eval_split"])]


def global_feature_datasets():
    return [n for n, e in DATASETS.items() if e["source"] == "real" and images_folder(e)]


# ------------------------------------------------------------------------------------------------- text caches
def text_caches(config):
    """Frozen token-feature caches a run reads (train and eval split), at the paths the trainer looks them up."""
    t, d = config["text"], config["data"]
    if t["mode"] != "frozen":
        return []
    # Hook: caches of generated caption sets (AsCL positives) are built by the trainer on first use, under the
    # same cache_dir; list them here (token_cache_path(..., tag)) to build them ahead as jobs of their own.
    splits = (d["train_split"], d["eval_split"]) + ((d["dev_split"],) if d["dev_split"] else ())  # dev: convergence
    paths = [token_cache_path(t["cache_dir"], d["dataset"], s, t["encoder"], t["max_length"]) for s in splits]
    return [str(p) for p in paths]


def _cache_jobs():
    jobs = {}
    for config in PLAN.by_hash.values():
        for path in text_caches(config):
            t = config["text"]
            jobs[path] = {"encoder": t["encoder"], "max_length": t["max_length"], "batch_size": t["batch_size"],
                          "device": config["device"]}
    return jobs


CACHE_JOBS = _cache_jobs()


def cache_job(wildcards, output):
    return CACHE_JOBS[str(output.feats)]


# ------------------------------------------------------------------------------------------------- concepts
def concept_dir(config):
    concepts = methods.run_inputs(config).get("concepts")
    return [concepts["dir"]] if concepts else []


def _concept_jobs():
    jobs = {}
    for config in PLAN.by_hash.values():
        for folder in concept_dir(config):
            d = config["data"]
            job = {"dataset": d["dataset"], "split": d["train_split"], "max_images": d["max_train_images"],
                   "word_vectors": methods.run_inputs(config)["concepts"]["word_vectors"]}
            if jobs.setdefault(folder, job) != job:
                raise WorkflowError(f"{CONFIG_SOURCE}: runs disagree on how to build concepts in {folder}: {jobs[folder]} vs {job}")
    return jobs


CONCEPT_JOBS = _concept_jobs()


def concept_inputs(wildcards):
    job = CONCEPT_JOBS[wildcards.concept_dir]
    vectors = [] if job["word_vectors"] == "minilm" else [job["word_vectors"]]  # a GloVe file must exist
    return {"data": data_ready(job["dataset"]), "vectors": vectors}


def concept_options(wildcards):
    job = CONCEPT_JOBS[wildcards.concept_dir]
    entry = DATASETS[job["dataset"]]
    opts = f"--root {entry['root']} --dataset {job['dataset']} --split {job['split']} --word-vectors {job['word_vectors']}"
    return opts + (f" --max-images {job['max_images']}" if job["max_images"] else "")


# ------------------------------------------------------------------------------------------------- training
def train_inputs(wildcards):
    config = PLAN.by_hash[wildcards.hash]
    return {
        "data": data_ready(config["data"]["dataset"]),
        "text": text_caches(config),
        "concepts": concept_dir(config),
        "globals": global_feature_files(config),
    }


def train_res(key):
    return WF["resources"]["train"][key]


# Concrete data set name (toy-f30k, coco, ...) -> its logical key (f30k, coco): the keys of resources.train_cost.
DATASET_KEYS = {entry["name"]: key for key, entry in WF["datasets"].items()}


def train_cost(key):
    """Resource `key` (runtime, mem_mb) of a training job: its run's (method, data set) entry of
    resources.train_cost, else resources.train's; times the attempt, so a retried job (profile `retries`) gets more."""

    def resource(wildcards, attempt):
        config = PLAN.by_hash[wildcards.hash]
        costs = WF["resources"]["train_cost"].get(config["method"], {})
        entry = costs.get(DATASET_KEYS[config["data"]["dataset"]], {})
        return entry.get(key, train_res(key)) * attempt

    return resource


def itrbench_command(wildcards, resources):
    """How a training job calls itrbench: directly on CPU; on GPUs pinned to its own devices (torchrun for > 1)."""
    n = int(resources.gpu)
    if n == 0:
        return "itrbench"
    ids = WF["resources"]["gpu_ids"]
    pin = f"itrbench pin-gpu --gpus {n}" + (f" --ids {','.join(ids)}" if ids else "") + " --"
    if n > 1:
        return f"{pin} torchrun --standalone --nproc_per_node {n} -m itrbench.cli"
    return f"{pin} itrbench"


# ------------------------------------------------------------------------------------------------- experiments
def experiment_run(wildcards):
    try:
        return PLAN.by_experiment[(wildcards.experiment, wildcards.dataset, int(wildcards.seed))]
    except KeyError:
        raise WorkflowError(
            f"{layout.EXPERIMENT_DIR.format(**dict(wildcards.items()))}: not a run of the selected experiments of "
            f"{CONFIG_SOURCE}"
        ) from None


def experiment_metrics(runs):
    return [r.path(layout.RECORD_METRICS) for r in runs]


def experiment_datasets():
    return [r.dataset for r in PLAN.runs]


# ------------------------------------------------------------------------------------------------- tables, figures
# Every config writes its tables and figures under results/<config name>/ (the report shows one config); only a
# config with `publish: true` (the default) copies them to the committed tables/ and figures/, via the targets
# `tables` and `figures`.
OUT = layout.config_dir(WF["name"])
TABLE_FORMATS = ("md", "csv", "html")


def table_outputs():
    return [layout.table_file(WF["name"], name, ext) for name in REGISTRY["tables"] for ext in TABLE_FORMATS] + [
        layout.table_file(WF["name"], "claims", ext) for ext in ("md", "csv")
    ]


def published_tables():
    names = [*REGISTRY["tables"], "claims"]
    return [f"tables/{name}.{ext}" for name in names for ext in ("md", "csv")] if WF["publish"] else []


_SHARED = {}


def shared_runs(table):
    """Rows of `table` whose experiment this config does not run but whose config another planned run has."""
    if table not in _SHARED:
        _SHARED[table] = reg.shared_runs(WF, REGISTRY, PLAN, PLAN.experiments_of_table(table), CONFIG_SOURCE)
    return _SHARED[table]


def table_inputs(wildcards):
    shared = shared_runs(wildcards.table)
    experiments = PLAN.experiments_of_table(wildcards.table) + sorted(set(shared.values()))
    return {
        "metrics": experiment_metrics(PLAN.runs_of(experiments)),
        "paper": paper_numbers(REGISTRY["tables"][wildcards.table]["paper"]),
        "registry": REGISTRY_FILE,
    }


def shared_args(wildcards):
    shared = shared_runs(wildcards.table)
    return " ".join(f"{exp}:{ds}={other}" for (exp, ds), other in shared.items())


def claim_experiments():
    import yaml

    with open(repo_path(WF["claims"])) as f:
        return sorted({e for c in (yaml.safe_load(f) or {}).get("claims") or [] for e in c.get("toy") or {}})


def claims_inputs(wildcards):
    runs = PLAN.runs_of(claim_experiments())
    return {
        "metrics": experiment_metrics(runs),
        "claims": repo_path(WF["claims"]),
        "paper": [paper_numbers(p) for p in PAPERS],
        "registry": REGISTRY_FILE,
        "data": sorted({data_ready(r.dataset) for r in runs}),  # captions give AsCL Fig. 5's query lengths
    }


def figure_outputs():
    return [layout.figure_file(WF["name"], name) for name in REGISTRY["figures"]]


def published_figures():
    return [f"figures/{name}.png" for name in REGISTRY["figures"]] if WF["publish"] else []


PAPERS = sorted({t["paper"] for t in REGISTRY["tables"].values()})  # papers whose numbers the registry prints


def paper_numbers(paper):
    return repo_path(os.path.join(WF["paper_numbers"], f"{paper}.csv"))


def figure_inputs(wildcards):
    """The figure's records, registry and paper numbers, plus the extra inputs it declares (experiments.yaml `needs`):
    a file a rule adds to each record (layout.RECORD_EXTRAS), or the data sets' captions; a need's `protocol` keeps
    only the runs whose data set evaluates that protocol (e.g. a figure plotting MS-COCO 5K measures just those)."""
    runs = PLAN.runs_of(PLAN.experiments_of_figure(wildcards.figure))
    inputs = {"metrics": experiment_metrics(runs), "registry": REGISTRY_FILE, "paper": [paper_numbers(p) for p in PAPERS]}
    for need in REGISTRY["figures"][wildcards.figure]["needs"]:
        chosen = [r for r in runs if "protocol" not in need or need["protocol"] in DATASETS[r.dataset]["protocols"]]
        if need["input"] == "captions":
            inputs[need["input"]] = sorted({data_ready(r.dataset) for r in chosen})
        else:
            inputs[need["input"]] = [r.path(layout.RECORD_EXTRAS[need["input"]]) for r in chosen]
    return inputs


def figure_caption(wildcards):
    return REGISTRY["figures"][wildcards.figure].get("title", wildcards.figure)


def table_caption(wildcards):
    return REGISTRY["tables"][wildcards.table].get("title", wildcards.table)


# ------------------------------------------------------------------------------------------------- experiment records
# One records job writes the records of many runs (one job per record was half the DAG). Runs are grouped by data set,
# method and *readers* (the tables, claims and figures whose inputs list the record), so a target that needs one record
# of a job needs all of them: no target makes a record, or trains a run, that it does not read.
RECORD_SCRIPT_CHARS = 60_000  # one job's shell command; Linux caps a single argument (`bash -c CMD`) at 128 KiB


def record_readers():
    """{record metrics.json path: names of the tables / claims / figures reading it}, from the rules' input functions."""
    readers = {}
    inputs = [(t, table_inputs(SimpleNamespace(table=t))) for t in REGISTRY["tables"]]
    inputs += [("claims", claims_inputs(None))] + [(f, figure_inputs(SimpleNamespace(figure=f))) for f in REGISTRY["figures"]]
    for name, given in inputs:
        for path in given["metrics"]:
            readers.setdefault(path, set()).add(name)
    return readers


def record_script(run):
    """Shell lines filling one record folder: the run's metrics and config file, and the pointer to the run."""
    metrics, config, pointer = (shlex.quote(run.path(t)) for t in layout.RECORD_FILES)
    run_metrics, run_config = shlex.quote(run.path(layout.RUN_METRICS)), shlex.quote(run.path(layout.RUN_CONFIG))
    return (f"cp {run_metrics} {metrics} && cp {run_config} {config}"
            f" && printf '%s\\n' {shlex.quote(reg.run_pointer_text(run))} > {pointer}")


def record_jobs():
    """The records jobs: [{name, stem, runs, script}], one per (data set, method, readers), split where the script
    would pass RECORD_SCRIPT_CHARS. `stem` (<dataset>/<method>.<k>) names the job's log and benchmark."""
    readers = record_readers()
    groups = {}
    for run in PLAN.runs:
        key = (run.dataset, run.method, frozenset(readers.get(run.path(layout.RECORD_METRICS), ())))
        groups.setdefault(key, []).append(run)
    jobs, index = [], {}
    for (dataset, method, _), runs in groups.items():
        parts, size = [[]], 0
        for run in runs:
            if parts[-1] and size + len(record_script(run)) > RECORD_SCRIPT_CHARS:
                parts.append([])
                size = 0
            parts[-1].append(run)
            size += len(record_script(run)) + 4
        for part in parts:
            k = index[(dataset, method)] = index.get((dataset, method), 0) + 1
            name = re.sub(r"\W", "_", f"records_{dataset}_{method}_{k}")
            jobs.append({"name": name, "stem": f"{dataset}/{method}.{k}", "runs": part,
                         "script": " && ".join(record_script(r) for r in part)})
    names = [j["name"] for j in jobs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise WorkflowError(f"{CONFIG_SOURCE}: data set names that differ only in punctuation would share records rules: {clash}")
    return jobs


def bench_outputs():
    return [layout.BENCH_OUTPUT.format(name=p.stem) for p in sorted(Path(workflow.basedir, "bench").glob("*.py"))]


# ------------------------------------------------------------------------------------------------- command line
def config_files_given_as_targets(argv):
    found, in_configfiles = [], False
    for prev, arg in zip([""] + argv[:-1], argv):
        if arg.startswith("-"):
            in_configfiles = arg in ("--configfile", "--configfiles")
        elif not in_configfiles and "=" not in arg and not (prev.startswith("-") and prev not in ("-n", "-p", "-F", "-f")):
            if arg.endswith((".yaml", ".yml")) and os.path.isfile(arg):
                found.append(arg)
    return found
