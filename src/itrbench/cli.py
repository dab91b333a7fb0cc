"""`itrbench` console script: subcommands are discovered from `itrbench.commands` (one module each) and from the
method plugins (`MethodPlugin.commands`)."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

# Before torch (and its libgomp) loads: OpenMP threads that spin while waiting steal the core from the other
# Snakemake job on a 2-core machine; measured 4-10x slower training with more runnable threads than cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from itrbench import commands, methods  # noqa: E402
from itrbench.errors import ItrbenchError  # noqa: E402


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("itrbench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itrbench", description="Image-text retrieval benchmark (CODER, AsCL).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"itrbench.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    for plugin in methods.all_plugins():  # a method's own subcommands (e.g. CODER's `concepts`)
        for name in plugin.commands:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ItrbenchError as err:
        print(f"itrbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
