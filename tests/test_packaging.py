"""Packaging: pyproject and environment.yml agree; README's test command is what CI runs."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs):
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in reqs}


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # `test` pulls in the workflow through the self-reference itrbench[pipeline]; environment.yml lists it flat
    assert "itrbench[pipeline]" in extras["test"]
    flat = project["dependencies"] + extras["pipeline"] + [r for r in extras["test"] if not r.startswith("itrbench")]
    wanted = _names(flat)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = _names(p for p in pip if not p.startswith("-e"))
    assert listed == wanted, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    # same version bounds too
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(flat)


def test_library_dependencies_leave_out_the_workflow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & {"snakemake", "snakemake-executor-plugin-slurm"}
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -q -e ".[pipeline]" && snakemake --cores all tables figures' in readme


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, "README's first section must give exactly two commands"
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci
    assert "torch==2.13.0" in test_command


def test_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["itrbench"] == "itrbench.cli:main"


def test_cli_version_and_help_for_every_option(capsys):
    import argparse

    import pytest

    from itrbench.cli import build_parser, main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("itrbench ")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, f"options without help text: {', '.join(missing)}"


def test_readme_lists_every_committed_figure_and_table():
    readme = (ROOT / "README.md").read_text()
    registry = yaml.safe_load((ROOT / "workflow" / "experiments.yaml").read_text())
    for name in registry["figures"]:
        assert f"figures/{name}.png" in readme, name
    for name in registry["tables"]:
        assert name in readme, name
    for path in (ROOT / "figures").glob("*.png"):
        assert f"figures/{path.name}" in readme, path.name
    first_screen = "\n".join(readme.splitlines()[:45])
    assert "pytest -q -m \"not slow\"" in first_screen and "--index-url https://download.pytorch.org/whl/cpu" in readme
