"""AsCL (2024): asymmetry-sensitive contrastive learning with generated positives / negatives and a fused score.

model.py: `AsCL`; losses.py: L_I (`ascl_contrastive`, SPEC §6, re-exported by `itrbench.losses`); scoring.py: the
cross-attention fusion and its batched scorer; samples.py: generated negatives and positives; geometry.py:
alignment and uniformity (Fig. 4) and command.py its `itrbench alignment-uniformity` subcommand; schema.yaml: the
`ascl:` run-config section. See docs/ascl.md.
"""
from itrbench.methods import MethodPlugin


def _inputs(config: dict) -> dict:
    # Global image features for the fusion branch; generated positives' token caches (trainer builds them).
    return {"global_features": True, "caption_caches": True}


PLUGIN = MethodPlugin(
    name="ascl", label="AsCL", model="itrbench.methods.ascl.model:AsCL", schema="methods/ascl/schema.yaml",
    needs=frozenset({"global_features", "caption_caches"}), inputs=_inputs, color=1,
    commands=("itrbench.methods.ascl.command",), figures="itrbench.methods.ascl.figures",
)
