"""Run configs: YAML -> dict, validated against `schemas/run.yaml` with every default filled in.

jsonschema validates but does not fill defaults; `fill_defaults` walks the schema once before validation so a
config file only needs the keys it changes. Errors name the file and the dotted key.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import hashlib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from itrbench.errors import ConfigError

@lru_cache(maxsize=None)
def run_schema() -> dict:
    """The run schema with the method names and each method plugin's option section (e.g. `coder:`) inlined."""
    from itrbench import methods

    root = resources.files("itrbench")
    schema = yaml.safe_load((root / "schemas" / "run.yaml").read_text())
    schema["properties"]["method"]["enum"] = list(methods.names())
    for plugin in methods.all_plugins():
        sub = yaml.safe_load((root / plugin.schema).read_text()) if plugin.schema else {"type": "object"}
        sub.setdefault("default", {})
        sub.pop("$schema", None)
        schema["properties"][plugin.name] = sub
    return schema


def fill_defaults(config: dict, schema: dict) -> dict:
    """Return a copy of `config` with every missing schema default inserted (recursively)."""
    out = copy.deepcopy(config)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and "properties" in sub:
            out[key] = fill_defaults(out[key], sub)
    return out


def deep_merge(base: dict, overrides: dict) -> dict:
    """Overrides win; nested dicts merge key by key; lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = f"{where}.{extra[0]}" if where else extra[0]
        hint = difflib.get_close_matches(extra[0], allowed, n=1)
        return f"{source}: unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else f"; allowed: {', '.join(allowed)}")
    if error.validator == "type":
        return f"{source}: key '{where}' must be of type {error.validator_value}, got {error.instance!r}"
    if error.validator == "enum":
        return f"{source}: key '{where}' must be one of {error.validator_value}, got {error.instance!r}"
    return f"{source}: key '{where or '<top>'}': {error.message}"


# YAML 1.2 numbers. PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, and Snakemake's `--config` parses
# nested values with YAML's BaseLoader, where every scalar is a string: both are read as numbers where the schema
# asks for one.
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _types(schema: dict) -> set:
    t = schema.get("type", [])
    return set([t] if isinstance(t, str) else t)


def _scalar(value: str, types: set):
    text = value.strip()
    if "integer" in types and _INT.match(text):
        return int(text)
    if "number" in types and _FLOAT.match(text):
        return float(text) if not _INT.match(text) else int(text)
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text in ("null", "Null", "NULL", "~"):
        return None
    return value


def coerce_to_schema(obj, schema: dict):
    """A copy of `obj` with strings that spell a number/boolean/null converted where `schema` expects one."""
    if isinstance(obj, str):
        types = _types(schema)
        return obj if not types or "string" in types else _scalar(obj, types)
    if isinstance(obj, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce_to_schema(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in obj.items()}
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [coerce_to_schema(v, schema["items"]) for v in obj]
    return obj


def check_globs(patterns: list[str], names, key: str, kind: str, source: str) -> None:
    """Every glob must match at least one name: a typo must not silently select (or leave out) nothing."""
    names = list(dict.fromkeys(names))
    for pattern in patterns or []:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            # suggest names and the globs a user would write for them (`coco:ascl/*` for a typo `coco:acsl/*`)
            globs = [f"{n[:i]}/*" for n in names for i in range(len(n)) if n[i] == "/"]
            hint = difflib.get_close_matches(pattern, list(dict.fromkeys(names + globs)), n=1, cutoff=0.6)
            raise ConfigError(f"{source}: {key}: '{pattern}' matches no {kind}"
                              + (f" (did you mean '{hint[0]}'?)" if hint else f"; expected one of {', '.join(names[:8])}"
                                 + (", ..." if len(names) > 8 else "")))


def validate(config: dict, source: str = "<config>") -> dict:
    """Fill defaults and validate; raise ConfigError naming `source` and the key on the first problem."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(config).__name__}")
    schema = run_schema()
    full = fill_defaults(coerce_to_schema(config, schema), schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(full), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(errors[0], source))
    return full


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return data if data is not None else {}


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Load a run config file, apply `overrides`, fill defaults, validate."""
    return validate(deep_merge(load_yaml(path), overrides or {}), source=str(path))


def config_hash(config: dict, exclude: tuple[str, ...] = ("seed",)) -> str:
    """Stable short hash of a resolved config (canonical JSON), ignoring `exclude` top-level keys."""
    kept = {k: v for k, v in config.items() if k not in exclude}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def dump_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
