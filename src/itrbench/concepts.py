"""CODER's concept graph under its SPEC §6 import path (`itrbench.concepts.concept_adjacency`).

The code lives in `itrbench/methods/coder/concepts.py`. This module is a re-export shim: it holds nothing but
imports (see docs/adding-a-method.md, "Names outside methods/").
"""
from itrbench.methods.coder.concepts import (  # noqa: F401
    Concepts, ConceptGCN, build_concepts, compute_concepts, concept_adjacency, load_concepts, save_concepts,
)
