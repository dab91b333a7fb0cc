"""CODER (Wang et al., ECCV 2022). Its code still lives in models/coder.py, losses/coder.py, memory.py, pgc.py,
concepts.py and schemas/coder.yaml (SPEC §6 import paths); this package is its entry in the method registry."""
from itrbench.methods import MethodPlugin


def _inputs(config: dict) -> dict:
    # The concept branch reads a concept graph built once per data set by `itrbench concepts`.
    c = config["coder"]
    if not c.get("concepts"):
        return {}
    return {"concepts": {"dir": c["concept_dir"], "word_vectors": c.get("word_vectors", "minilm")}}


PLUGIN = MethodPlugin(
    name="coder", label="CODER", model="itrbench.models.coder:CODER", schema="schemas/coder.yaml",
    needs=frozenset({"concepts"}), inputs=_inputs, color=0,
)
