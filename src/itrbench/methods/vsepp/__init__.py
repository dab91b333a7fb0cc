"""The suite's dual-encoder baseline: GPO pooling + hardest-negative triplet (BTR) on region features, which is
VSE∞'s recipe, not VSE++'s (ResNet grids, mean pooling). Method id `vsepp` is historical; it is displayed honestly."""
from itrbench.methods import MethodPlugin

PLUGIN = MethodPlugin(name="vsepp", label="VSE∞ (GPO + BTR)", model="itrbench.models.vsepp:VSEpp",
                      schema="schemas/vsepp.yaml", color=7)
