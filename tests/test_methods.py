"""The method plugin registry: discovery, schema sections, pipeline inputs, and that nothing else lists methods."""
import pytest

from itrbench import methods
from itrbench.config import run_schema, validate
from itrbench.errors import ConfigError
from itrbench.experiments import plan as reg


def test_discovers_every_method_package():
    assert {"vsepp", "coder", "ascl"} <= set(methods.names())
    for plugin in methods.all_plugins():
        cls = plugin.model_class()
        assert getattr(cls, "method_name", plugin.name) == plugin.name
        assert methods.labels()[plugin.name] == plugin.label


def test_run_schema_takes_methods_and_sections_from_plugins():
    schema = run_schema()
    assert schema["properties"]["method"]["enum"] == list(methods.names())
    for plugin in methods.all_plugins():
        assert plugin.name in schema["properties"]
    with pytest.raises(ConfigError, match="method"):
        validate({"method": "nosuchmethod"}, "x.yaml")


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="'nosuch' is not available.*vsepp"):
        methods.get("nosuch")


def test_run_inputs_follow_the_config():
    coder = validate({"method": "coder", "coder": {"concept_dir": "c/toy"}})
    assert methods.run_inputs(coder)["concepts"]["dir"] == "c/toy"
    assert methods.run_inputs({**coder, "coder": {**coder["coder"], "concepts": False}}) == {}
    assert methods.run_inputs(validate({"method": "ascl"}))["global_features"] is True
    assert methods.run_inputs(validate({"method": "vsepp"})) == {}


def test_plugin_rejects_unknown_pipeline_input():
    with pytest.raises(ConfigError, match="unknown pipeline inputs"):
        methods.MethodPlugin(name="x", label="X", model="m:C", needs=frozenset({"depth_maps"}))


def test_workflow_config_method_keys_must_be_methods():
    reg.check_method_sections({"methods": {"coder": {}}, "datasets": {"f30k": {"methods": {"ascl": {}}}}}, "wf.yaml")
    with pytest.raises(ConfigError, match=r"wf.yaml: unknown key 'datasets.f30k.methods.codr'"):
        reg.check_method_sections({"datasets": {"f30k": {"methods": {"codr": {}}}}}, "wf.yaml")


def _method_mentions(path, names, shown: str) -> list[str]:
    """Where a module's code (identifiers, imports, string constants; not docstrings or comments) names a method."""
    import ast
    import re

    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    word = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, names))})(?![\w-])")
    found = []
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts = [node.value]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.ImportFrom):
            texts = [(node.module or "").replace(".", " ")] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            texts = [a.name.replace(".", " ") for a in node.names]
        found += [f"{shown}:{node.lineno}: {m.group(1)}" for t in texts for m in word.finditer(t)]
    return found


def is_reexport_shim(path) -> bool:
    """A module that only keeps old import paths working: a docstring, then nothing but imports (SPEC §6 paths such
    as `itrbench.losses.diversity` re-exported from `itrbench/methods/<name>/`). The one place outside methods/ that
    may spell a method's package; it can hold no logic, so it cannot branch on a method (docs/adding-a-method.md)."""
    import ast

    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


def test_no_module_outside_methods_names_a_method():
    from pathlib import Path

    import itrbench

    root = Path(itrbench.__file__).parent
    names = list(methods.names())
    mentions = [m for path in sorted(root.rglob("*.py"))
                if "methods" not in path.relative_to(root).parts and not is_reexport_shim(path)
                for m in _method_mentions(path, names, str(path.relative_to(root)))]
    assert not mentions, "method names outside itrbench/methods/:\n" + "\n".join(mentions)


def test_mention_finder_and_shim_rule_catch_what_they_should(tmp_path):
    code = tmp_path / "generic.py"
    code.write_text('"""Mentions vsepp in a docstring: fine."""\nif config["method"] == "vsepp":  # coder\n    pass\n')
    assert _method_mentions(code, ["vsepp", "coder"], "generic.py") == ["generic.py:2: vsepp"]
    shim = tmp_path / "shim.py"
    shim.write_text('"""Re-exports."""\nfrom itrbench.methods.coder.losses import diversity  # noqa: F401\n')
    assert is_reexport_shim(shim) and _method_mentions(shim, ["coder"], "shim.py") == ["shim.py:2: coder"]
    shim.write_text(shim.read_text() + "X = 1\n")  # any statement besides imports: not a shim, checked like the rest
    assert not is_reexport_shim(shim)


def test_spec_import_paths_are_the_method_packages_objects():
    """SPEC §6 names keep their import paths after the move into methods/<name>/."""
    import itrbench.concepts
    import itrbench.losses
    from itrbench.methods.ascl import losses as ascl_losses
    from itrbench.methods.coder import concepts, losses as coder_losses

    assert itrbench.losses.diversity is coder_losses.diversity
    assert itrbench.losses.dcl_directional is coder_losses.dcl_directional
    assert itrbench.losses.ascl_contrastive is ascl_losses.ascl_contrastive
    assert itrbench.concepts.concept_adjacency is concepts.concept_adjacency


def test_library_imports_without_snakemake_or_the_report():
    """The core library (data, methods and their models, losses, evaluation, training) and the experiment planner
    are usable without Snakemake: imported in a fresh interpreter where `import snakemake` fails, they load neither
    snakemake nor itrbench.report, and the registry loads and lays out its runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import itrbench

    code = "\n".join([
        "import sys",
        "sys.modules['snakemake'] = None  # any `import snakemake...` now raises ImportError",
        "import itrbench, itrbench.methods, itrbench.evaluation, itrbench.losses, itrbench.concepts, itrbench.data",
        "import itrbench.data.precomp, itrbench.training, itrbench.experiments",
        "from itrbench.experiments import layout, plan",
        "registry = plan.load_registry('workflow/experiments.yaml')",
        "assert registry['experiments'] and layout.RUN_METRICS.format(hash='0' * 16, seed=0).endswith('/metrics.json')",
        "from itrbench import methods",
        "classes = [p.model_class() for p in methods.all_plugins()]",
        "loaded = sorted(m for m in sys.modules if m.startswith(('itrbench.report', 'snakemake.')))",
        "print(len(classes), loaded)",
    ])
    env = {**os.environ, "PYTHONPATH": str(Path(itrbench.__file__).parents[1])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == f"{len(methods.names())} []", run.stdout
