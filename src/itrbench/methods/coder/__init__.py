"""CODER (Wang et al., ECCV 2022): diversity-sensitive contrastive learning with a concept branch and PGC.

model.py: `CODER` (the shared dual encoder + concept queries, M-DCL, PGC head); losses.py: DCL and the diversity
(SPEC §6, re-exported by `itrbench.losses`); memory.py: momentum encoders' coupled queues; pgc.py: pseudo-label
clustering; concepts.py: the concept graph (re-exported by `itrbench.concepts`) and command.py its
`itrbench concepts` subcommand; schema.yaml: the `coder:` run-config section. See docs/coder.md.
"""
from itrbench.methods import MethodPlugin


def _inputs(config: dict) -> dict:
    # The concept branch reads a concept graph built once per data set by `itrbench concepts`.
    c = config["coder"]
    if not c.get("concepts"):
        return {}
    return {"concepts": {"dir": c["concept_dir"], "word_vectors": c.get("word_vectors", "minilm")}}


PLUGIN = MethodPlugin(
    name="coder", label="CODER", model="itrbench.methods.coder.model:CODER", schema="methods/coder/schema.yaml",
    needs=frozenset({"concepts"}), inputs=_inputs, color=0, commands=("itrbench.methods.coder.command",),
    figures="itrbench.methods.coder.figures",
)
