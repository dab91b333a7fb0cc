"""Experiment registry: named experiments (base config + overrides) resolved into run configs, hashed, planned.

The Snakefile and the `itrbench resolve / table / figure / claims` commands read the registry through this module
only, so the pipeline and the tests agree on what a run is. A *run* is one (resolved config, seed); experiments whose
configs resolve identically share it (key = `config_hash`, the seed excluded), so each trains once. Where a run and
an experiment's record of it live is `itrbench.experiments.layout`'s.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from itrbench.config import _describe as describe_schema_error  # one wording for every schema error
from itrbench import methods
from itrbench.config import config_hash, deep_merge, load_yaml, validate
from itrbench.errors import ConfigError
from itrbench.experiments import layout
from itrbench.utils import atomic_path

__all__ = [
    "Run", "Plan", "config_hash", "load_registry", "load_workflow_config", "expand_env", "resolve_experiment",
    "plan_runs", "shared_runs", "run_config_text", "run_pointer_text", "write_experiment_record", "PROTOCOL_DATASET",
    "FIGURE_NEEDS",
]

# Which logical data set a protocol is evaluated on.
PROTOCOL_DATASET = {"f30k_1k": "f30k", "coco_1k": "coco", "coco_5k": "coco"}

# What a figure may ask the pipeline for besides its experiments' records (experiments.yaml `figures.<f>.needs`):
# a file a rule adds to each record (layout.RECORD_EXTRAS), or `captions`: the data sets' caption files.
FIGURE_NEEDS = ("captions", *layout.RECORD_EXTRAS)

_NAME = r"^[a-z0-9][a-z0-9_.+-]*(/[a-z0-9][a-z0-9_.+-]*)*$"
REGISTRY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["experiments"],
    "properties": {
        "tables": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["paper", "table"],
                "properties": {"paper": {"type": "string"}, "table": {"type": "string"}, "title": {"type": "string"}},
            },
        },
        "figures": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "title": {"type": "string"},
                    # extra inputs; `protocol` keeps only the runs whose data set evaluates that protocol
                    "needs": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["input"],
                        "properties": {"input": {"enum": list(FIGURE_NEEDS)},
                                       "protocol": {"enum": list(PROTOCOL_DATASET)}}}},
                },
            },
        },
        "bases": {
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["method"]},
        },
        "experiments": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _NAME},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["base", "datasets"],
                "properties": {
                    "base": {"type": "string"},
                    "datasets": {"type": "array", "minItems": 1, "uniqueItems": True,
                                 "items": {"type": "string", "enum": ["f30k", "coco"]}},
                    "overrides": {"type": "object"},
                    "reports": {
                        "type": "array",
                        "items": {"type": "object", "additionalProperties": False, "required": ["table", "row"],
                                  "properties": {"table": {"type": "string"}, "row": {"type": "string"}}},
                    },
                    "figures": {"type": "array", "items": {"type": "string"}},
                    "note": {"type": "string"},
                },
            },
        },
    },
}


def load_registry(path: str | Path) -> dict:
    """Read and check `experiments.yaml`: structure, base names, table and figure references (one error line)."""
    source = str(path)
    reg = load_yaml(path)
    errors = sorted(jsonschema.Draft202012Validator(REGISTRY_SCHEMA).iter_errors(reg), key=lambda e: len(e.absolute_path))
    if errors:
        raise ConfigError(describe_schema_error(errors[0], source))
    reg.setdefault("tables", {})
    reg.setdefault("figures", {})
    reg.setdefault("bases", {})
    for fig in reg["figures"].values():
        fig.setdefault("needs", [])
    seen_rows: dict[tuple, str] = {}
    for name, base in reg["bases"].items():
        if base["method"] not in methods.names():
            raise ConfigError(f"{source}: bases/{name}/method must be one of {', '.join(methods.names())}, got {base['method']!r}")
        validate(base, source=f"{source} (bases/{name})")
    for name, exp in reg["experiments"].items():
        where = f"{source}: experiments/{name}"
        if exp["base"] not in reg["bases"]:
            raise ConfigError(f"{where}/base: unknown base '{exp['base']}'; expected one of {', '.join(reg['bases'])}")
        exp.setdefault("overrides", {})
        exp.setdefault("reports", [])
        exp.setdefault("figures", [])
        validate(exp["overrides"], source=f"{source} (experiments/{name}/overrides)")
        for rep in exp["reports"]:
            if rep["table"] not in reg["tables"]:
                raise ConfigError(f"{where}/reports: unknown table '{rep['table']}'; expected one of {', '.join(reg['tables'])}")
            key = (rep["table"], rep["row"])
            if key in seen_rows:
                raise ConfigError(f"{where}/reports: row '{rep['row']}' of {rep['table']} is already reported by {seen_rows[key]}")
            seen_rows[key] = name
        for fig in exp["figures"]:
            if fig not in reg["figures"]:
                raise ConfigError(f"{where}/figures: unknown figure '{fig}'; expected one of {', '.join(reg['figures'])}")
    return reg


# ---------------------------------------------------------------------------------------------- workflow config
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(obj, where: str = "config"):
    """Expand `${VAR}` and `${VAR:-default}` in every string of a config; an unset VAR without default is an error."""
    if isinstance(obj, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def sub(m):
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise ConfigError(f"{where}: environment variable {m.group(1)} is not set (or write ${{{m.group(1)}:-default}})")
            return m.group(2)
        return value

    return _ENV.sub(sub, obj)


def check_method_sections(wf: dict, source: str) -> None:
    """The workflow config's `methods:`, `datasets.<d>.methods:` and `resources.train_cost:` keys must name method plugins."""
    sections = [("methods", wf.get("methods") or {})]
    sections += [(f"datasets.{d}.methods", e.get("methods") or {}) for d, e in (wf.get("datasets") or {}).items()]
    sections.append(("resources.train_cost", (wf.get("resources") or {}).get("train_cost") or {}))
    for where, section in sections:
        for key in section:
            if key not in methods.names():
                raise ConfigError(f"{source}: unknown key '{where}.{key}'; expected a method: {', '.join(methods.names())}")


def load_workflow_config(path: str | Path, schema: str | Path) -> dict:
    """Load a workflow config outside Snakemake as the Snakefile does: schema check with defaults, then env vars."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    config = load_yaml(path)
    try:
        snakemake_validate(config, str(schema))
    except WorkflowError as err:
        raise ConfigError(workflow_error_line(err, f"{path}: invalid workflow config")) from None
    check_method_sections(config, str(path))
    return expand_env(config, str(path))


def workflow_error_line(err: Exception, source: str) -> str:
    """The schema problem behind Snakemake's "Error validating config file." as one line naming the key."""
    inner = err.__context__
    if isinstance(inner, jsonschema.ValidationError):
        return describe_schema_error(inner, source)
    return f"{source}: {str(err).strip().splitlines()[0]}"


# ---------------------------------------------------------------------------------------------- resolution
def _dataset_layer(wf: dict, entry: dict, method: str) -> dict:
    """What a data set entry of the workflow config puts into a run config: the data section, the concept dir of a
    method that needs concepts."""
    keys = ("root", "train_split", "eval_split", "protocols", "max_train_images", "max_eval_images")
    # An unset limit (null) must not erase one a method layer set: only concrete values go in.
    layer = {"data": {"dataset": entry["name"], **{k: entry[k] for k in keys if entry.get(k) is not None}}}
    if "concepts" in methods.get(method).needs:
        layer[method] = {"concept_dir": f"{wf['concepts']['dir']}/{entry['name']}"}
    return layer


_CHECKED: set[str] = set()


def _check_layer(layer: dict, source: str) -> None:
    """Validate one config fragment on its own (raises ConfigError naming `source`); each distinct one once."""
    key = source + json.dumps(layer, sort_keys=True, default=str)
    if key not in _CHECKED:
        validate(layer, source=source)
        _CHECKED.add(key)


def resolve_experiment(wf: dict, registry: dict, experiment: str, dataset: str, seed: int | None = None,
                       wf_source: str = "workflow config") -> dict:
    """The validated run config (every default filled) of `experiment` on logical data set `dataset`.

    Without `seed` the config carries no `seed` key: that is the form `config_hash` identifies a run by.
    Each layer is checked on its own first so an unknown key names the file and section it came from.
    """
    exp = registry["experiments"].get(experiment)
    if exp is None:
        raise ConfigError(f"unknown experiment '{experiment}'")
    if dataset not in wf["datasets"]:
        raise ConfigError(f"{wf_source}: experiment {experiment} needs data set '{dataset}', which datasets does not define")
    base = registry["bases"][exp["base"]]
    method = base["method"]
    entry = wf["datasets"][dataset]
    layers = [
        (wf.get("run", {}), f"{wf_source} (run)"),
        (wf.get("methods", {}).get(method, {}), f"{wf_source} (methods/{method})"),
        (base, f"registry (bases/{exp['base']})"),
        (_dataset_layer(wf, entry, method), f"{wf_source} (datasets/{dataset})"),
        (entry.get("methods", {}).get(method, {}), f"{wf_source} (datasets/{dataset}/methods/{method})"),
        (exp["overrides"], f"registry (experiments/{experiment}/overrides)"),
    ]
    merged: dict = {}
    for layer, source in layers:
        _check_layer(layer, source)
        merged = deep_merge(merged, layer)
    if merged.get("method", method) != method:
        raise ConfigError(f"registry (experiments/{experiment}/overrides): 'method' may not change the base's method {method}")
    merged["method"] = method
    if seed is not None:
        merged["seed"] = int(seed)
    full = validate(merged, source=f"experiment {experiment} on {dataset}")
    if seed is None:
        full.pop("seed", None)
    return full


# ---------------------------------------------------------------------------------------------- planning
@dataclass(eq=False)
class Run:
    """One training run as seen by one experiment: where it trains (by hash) and where it is reported."""

    experiment: str
    dataset_key: str  # logical: f30k | coco
    dataset: str      # concrete folder name: toy-f30k | f30k | ...
    method: str
    seed: int
    hash: str
    config: dict = field(repr=False)  # resolved, without seed

    def path(self, template: str) -> str:
        """A `layout` template filled in for this run: its run folder's files and its experiment record's."""
        return template.format(hash=self.hash, seed=self.seed, dataset=self.dataset, method=self.method,
                               experiment=self.experiment)

    @property
    def run_dir(self) -> str:
        return self.path(layout.RUN_DIR)

    @property
    def experiment_dir(self) -> str:
        return self.path(layout.EXPERIMENT_DIR)


@dataclass
class Plan:
    """Every run the selected experiments need, with lookups by experiment and by (hash, seed)."""

    runs: list[Run]
    registry: dict
    seeds: list[int]

    def __post_init__(self):
        self.by_experiment: dict[tuple[str, str, int], Run] = {}
        self.by_hash: dict[str, dict] = {}
        for r in self.runs:
            self.by_experiment[(r.experiment, r.dataset, r.seed)] = r
            self.by_hash.setdefault(r.hash, r.config)

    @property
    def unique_runs(self) -> list[tuple[str, int]]:
        """Distinct (config hash, seed) pairs, in first-use order: what actually trains."""
        return list(dict.fromkeys((r.hash, r.seed) for r in self.runs))

    def experiments_of_table(self, table: str) -> list[str]:
        return [n for n, e in self.registry["experiments"].items() if any(r["table"] == table for r in e["reports"])]

    def experiments_of_figure(self, figure: str) -> list[str]:
        return [n for n, e in self.registry["experiments"].items() if figure in e["figures"]]

    def runs_of(self, experiments) -> list[Run]:
        wanted = set(experiments)
        return [r for r in self.runs if r.experiment in wanted]


def selected(name: str, only: list[str]) -> bool:
    return not only or any(fnmatch.fnmatchcase(name, pattern) for pattern in only)


def plan_runs(wf: dict, registry: dict, wf_source: str = "workflow config") -> Plan:
    """Resolve every selected experiment on each of its data sets the config defines, for every seed."""
    runs = []
    for name, exp in registry["experiments"].items():
        if not selected(name, wf.get("only", [])):
            continue
        for ds in exp["datasets"]:
            if ds not in wf["datasets"]:
                continue  # this scale does not have that data set; its rows read `not run`
            if any(fnmatch.fnmatchcase(f"{ds}:{name}", pattern) for pattern in wf.get("skip", [])):
                continue  # left out at this scale on purpose (config `skip`); its rows read `not run`
            config = resolve_experiment(wf, registry, name, ds, wf_source=wf_source)
            h = config_hash(config)
            for seed in wf.get("seeds", [0]):
                runs.append(Run(name, ds, config["data"]["dataset"], config["method"], int(seed), h, config))
    return Plan(runs, registry, [int(s) for s in wf.get("seeds", [0])])


def shared_runs(wf: dict, registry: dict, plan: Plan, experiments, wf_source: str = "workflow config") -> dict:
    """{(experiment, data set key): planned experiment} for each of `experiments` the plan does not run on a data
    set where another planned experiment resolves to the same config (same hash): its table row reads that run."""
    by_hash = {}
    for r in plan.runs:
        by_hash.setdefault((r.hash, r.dataset_key), r.experiment)
    planned = {(r.experiment, r.dataset_key) for r in plan.runs}
    out = {}
    for name in experiments:
        for ds in registry["experiments"][name]["datasets"]:
            if ds not in wf["datasets"] or (name, ds) in planned:
                continue
            h = config_hash(resolve_experiment(wf, registry, name, ds, wf_source=wf_source))
            if (h, ds) in by_hash:
                out[(name, ds)] = by_hash[(h, ds)]
    return out


# ---------------------------------------------------------------------------------------------- run files
# The pipeline writes these small files from shell rules (printf), so the texts are built here once.
def yaml_text(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def run_config_text(config: dict, seed: int) -> str:
    """The file `itrbench train --config` reads: the resolved config plus its seed."""
    return yaml_text({**copy.deepcopy(config), "seed": int(seed)})


def run_pointer_text(run: Run) -> str:
    """run.json of an experiment record: which experiment this is and the hash-keyed run folder it came from."""
    return json.dumps({
        "experiment": run.experiment, "dataset_key": run.dataset_key, "dataset": run.dataset, "method": run.method,
        "seed": run.seed, "config_hash": run.hash, "run_dir": run.run_dir,
    }, indent=2)


def write_experiment_record(run: Run, metrics_path: str | Path, out_dir: str | Path) -> None:
    """Fill an experiment's seed folder as the pipeline's `records_*` rules do (used outside Snakemake)."""
    out_dir = Path(out_dir)
    for name, text in (("config.yaml", run_config_text(run.config, run.seed)), ("run.json", run_pointer_text(run) + "\n"),
                       ("metrics.json", Path(metrics_path).read_text())):
        with atomic_path(out_dir / name) as tmp:
            Path(tmp).write_text(text)
