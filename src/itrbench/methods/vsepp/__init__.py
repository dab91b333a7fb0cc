"""The suite's dual-encoder baseline: GPO pooling + hardest-negative triplet (BTR) on region features, which is
VSE∞'s recipe, not VSE++'s (ResNet grids, mean pooling). Method id `vsepp` is historical; it is displayed honestly.

model.py: `VSEpp` (the shared `models.dual.DualEncoder` + `losses.triplet.btr_loss`); schema.yaml: its `vsepp:`
run-config section.
"""
from itrbench.methods import MethodPlugin

PLUGIN = MethodPlugin(name="vsepp", label="VSE∞ (GPO + BTR)", model="itrbench.methods.vsepp.model:VSEpp",
                      schema="methods/vsepp/schema.yaml", color=7)
