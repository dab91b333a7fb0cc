"""Loss functions under their SPEC §6 import paths (`itrbench.losses.diversity`, ...).

The shared one (the VSE++ triplet) lives here in `triplet.py`; a method's own losses live in its package
(`itrbench/methods/<name>/losses.py`) and are re-exported here. This module is a re-export shim: it holds
nothing but imports (see docs/adding-a-method.md, "Names outside methods/").
"""
from itrbench.losses.triplet import btr_loss, same_image_mask  # noqa: F401
from itrbench.methods.coder.losses import dcl_directional, diversity  # noqa: F401
from itrbench.methods.ascl.losses import ascl_contrastive  # noqa: F401
