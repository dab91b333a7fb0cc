"""The method plugin registry: discovery, schema sections, pipeline inputs, and that nothing else lists methods."""
import pytest

from itrbench import methods
from itrbench.config import run_schema, validate
from itrbench.errors import ConfigError
from itrbench.report import registry as reg


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


@pytest.mark.xfail(strict=True, reason="issue 12: CODER's and AsCL's code still lives in models/, losses/, scoring.py, "
                                       "memory.py, ... until it moves into methods/<name>/; remove this mark then")
def test_no_module_outside_methods_names_a_method():
    from pathlib import Path

    import itrbench

    root = Path(itrbench.__file__).parent
    names = list(methods.names())
    mentions = [m for path in sorted(root.rglob("*.py")) if "methods" not in path.relative_to(root).parts
                for m in _method_mentions(path, names, str(path.relative_to(root)))]
    assert not mentions, "method names outside itrbench/methods/:\n" + "\n".join(mentions)
