"""The results layout (SPEC §5): every path the pipeline writes under results/ is spelt here, once.

A template's {fields} are the wildcards of the rule that writes the path: a Snakemake rule takes the template as
its output pattern as is, and the planner fills it in for one run (`Run.path(template)`). Benchmark and log files
are the exception: each rule spells its own, under BENCHMARKS/<rule>/ and results/logs/ (docs/pipeline.md says why).
"""
from __future__ import annotations

# A training run, keyed by its config hash (seed excluded): rule `train` writes it, every experiment sharing the
# config reads it.
RUN_DIR = "results/runs/{hash}/seed{seed}"
RUN_METRICS = f"{RUN_DIR}/metrics.json"
RUN_LOG = f"{RUN_DIR}/train.log"
RUN_CONFIG = "results/runs/{hash}/config.seed{seed}.yaml"  # the resolved config + seed `itrbench train` reads

# An experiment's record of one run, written by the records_* rules; tables, claims and figures read these.
EXPERIMENT_DIR = "results/{dataset}/{method}/{experiment}/seed{seed}"
RECORD_METRICS = f"{EXPERIMENT_DIR}/metrics.json"  # a copy of the run's
RECORD_CONFIG = f"{EXPERIMENT_DIR}/config.yaml"    # a copy of the run config
RECORD_POINTER = f"{EXPERIMENT_DIR}/run.json"      # which experiment, and the run folder it came from
RECORD_FILES = (RECORD_METRICS, RECORD_CONFIG, RECORD_POINTER)
# Files a rule adds to a record only where a figure asks for them (experiments.yaml `figures.<name>.needs`).
RECORD_EXTRAS = {"alignment_uniformity": f"{EXPERIMENT_DIR}/alignment_uniformity.json"}

# Data checks: the toy generator's options (a changed option regenerates the data) and real data's validation.
TOY_OPTIONS = "results/data/{dataset}.toy.yaml"
DATA_VALIDATED = "results/data/{dataset}.validated.txt"

BENCH_OUTPUT = "results/bench/{name}.txt"  # what bench/<name>.py prints
BENCHMARKS = "results/benchmarks"          # Snakemake's per-job resource files, one folder per rule kind


def config_dir(config_name: str) -> str:
    """One workflow config's tables and figures (the committed tables/ and figures/ are copies of the default's)."""
    return f"results/{config_name}"


def table_file(config_name: str, table: str = "{table}", ext: str = "{ext}") -> str:
    """A table of one config; with the defaults, the pattern of rule `table` (wildcards `table`, `ext`)."""
    return f"{config_dir(config_name)}/tables/{table}.{ext}"


def figure_file(config_name: str, figure: str = "{figure}") -> str:
    """A figure of one config; with the default, the pattern of rule `figure` (wildcard `figure`)."""
    return f"{config_dir(config_name)}/figures/{figure}.png"
