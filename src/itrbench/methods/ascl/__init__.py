"""AsCL (2024). Its code still lives in models/ascl.py, losses/ascl.py, scoring.py, samples.py, geometry.py and
schemas/ascl.yaml (SPEC §6 import paths); this package is its entry in the method registry."""
from itrbench.methods import MethodPlugin


def _inputs(config: dict) -> dict:
    # Global image features for the fusion branch; generated positives' token caches (trainer builds them).
    return {"global_features": True, "caption_caches": True}


PLUGIN = MethodPlugin(
    name="ascl", label="AsCL", model="itrbench.models.ascl:AsCL", schema="schemas/ascl.yaml",
    needs=frozenset({"global_features", "caption_caches"}), inputs=_inputs, color=1,
)
