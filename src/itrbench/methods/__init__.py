"""Method plugins: every package `itrbench/methods/<name>/` is one retrieval method, found at import time.

A plugin package's `__init__` defines `PLUGIN = MethodPlugin(...)` and nothing heavy (the workflow reads the
registry without loading torch): its name, display label, where its model class lives, its option schema,
which extra pipeline inputs its runs need and any `itrbench` subcommands of its own. Nothing else in the suite lists method names; it asks `names()`,
`get(name)` or `run_inputs(config)` here. See docs/adding-a-method.md.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from itrbench.errors import ConfigError

# Extra inputs a method may need besides region features and frozen token caches, each built by its own job:
#   concepts         CODER's concept graph (`itrbench concepts`), folder `<section>.concept_dir`
#   global_features  one global feature per image (`{split}_global.npy`, `itrbench global-features` on real data)
#   caption_caches   token caches of generated caption sets (built by the trainer on first use)
PIPELINE_INPUTS = ("concepts", "global_features", "caption_caches")


@dataclass(frozen=True)
class MethodPlugin:
    name: str                                   # run configs say `method: <name>`; equals the package name
    label: str                                  # display name in tables and figures
    model: str                                  # "module:Class" of its RetrievalModel (imported on build only)
    schema: str | None = None                   # option schema (YAML), a path inside the itrbench package;
                                                # it validates the run config's `<name>:` section
    needs: frozenset = frozenset()              # subset of PIPELINE_INPUTS its runs may need
    inputs: Callable[[dict], dict] | None = None  # resolved run config -> the needs this run really has
    color: int = 7                              # index into the figures' palette
    commands: tuple[str, ...] = ()              # modules adding `itrbench` subcommands (each has register(sub))
    figures: str | None = None                  # report module whose FIGURES plot the method's own options

    def __post_init__(self):
        unknown = set(self.needs) - set(PIPELINE_INPUTS)
        if unknown:
            raise ConfigError(f"method plugin {self.name}: unknown pipeline inputs {sorted(unknown)}; "
                              f"expected some of {', '.join(PIPELINE_INPUTS)}")

    def model_class(self):
        module, _, attr = self.model.partition(":")
        return getattr(importlib.import_module(module), attr)


@lru_cache(maxsize=None)
def _plugins() -> dict[str, MethodPlugin]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        plugin = getattr(module, "PLUGIN", None)
        if not isinstance(plugin, MethodPlugin):
            raise ConfigError(f"{module.__file__}: a method package must define PLUGIN = MethodPlugin(...)")
        if plugin.name != info.name:
            raise ConfigError(f"{module.__file__}: PLUGIN.name is {plugin.name!r} but the package is {info.name!r}")
        found[plugin.name] = plugin
    return found


def names() -> tuple[str, ...]:
    return tuple(_plugins())


def all_plugins() -> tuple[MethodPlugin, ...]:
    return tuple(_plugins().values())


def get(name: str) -> MethodPlugin:
    plugins = _plugins()
    if name not in plugins:
        raise ConfigError(f"method: '{name}' is not available (known: {', '.join(plugins)})")
    return plugins[name]


def labels() -> dict[str, str]:
    return {p.name: p.label for p in _plugins().values()}


def run_inputs(config: dict) -> dict:
    """The extra pipeline inputs of one resolved run config, e.g. {'concepts': {'dir': ..., 'word_vectors': ...}}."""
    plugin = get(config["method"])
    return plugin.inputs(config) if plugin.inputs else {}
