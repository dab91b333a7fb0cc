"""Loss functions: CODER's diversity-sensitive losses, the VSE++ triplet, AsCL's asymmetry-sensitive loss."""
from itrbench.losses.triplet import btr_loss  # noqa: F401
from itrbench.losses.coder import dcl_directional, diversity  # noqa: F401
from itrbench.losses.ascl import ascl_contrastive  # noqa: F401
