"""SCAN (Lee et al., ECCV 2018): stacked cross attention, text-to-image and image-to-text, and their ensemble.

Everything SCAN is lives in this package: the attention and its batched scorer (attention.py), the model and loss
(model.py; the loss is the suite's VSE++ hardest-negative triplet), the option schema (schema.yaml) and a page
mapping the paper's equations to the code (README.md). It needs no extra pipeline inputs.
"""
from itrbench.methods import MethodPlugin

PLUGIN = MethodPlugin(name="scan", label="SCAN", model="itrbench.methods.scan.model:SCAN",
                      schema="methods/scan/schema.yaml", color=2)
