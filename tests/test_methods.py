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
