"""Zero123++ multi-view anchors with STAG4D's temporal anchor (SPEC section 9).

* :func:`load_pipeline` (``pipeline.py``): Zero123++ v1.1 from a hub id or a local diffusers
  folder, with reference attention; ``pipe(rgb_on_grey, steps=75, guidance_scale=4.0, seed=42,
  anchor=...) -> uint8 [960, 640, 3]``.
* :class:`TemporalAnchor` (``temporal_anchor.py``): records frame 0's self-attention key/value
  inputs and blends them into later frames; modes ``record`` / ``replay`` / ``off``.
* :class:`ReferenceAttnProcessor` (``attention.py``): the attention processor that implements
  both.

Importing this package imports torch only; diffusers and transformers are imported when a
pipeline is loaded or a processor is built.
"""
from __future__ import annotations

from .temporal_anchor import AnchorMismatch, TemporalAnchor, record_bytes, self_attention_tokens

__all__ = [
    "AnchorMismatch",
    "TemporalAnchor",
    "record_bytes",
    "self_attention_tokens",
    "load_pipeline",
    "Zero123PlusPipeline",
    "ReferenceAttnProcessor",
    "DEFAULT_MODEL_ID",
]


def __getattr__(name: str):
    # pipeline.py imports no heavy module at import time either, but keep it out of the package
    # import until asked for.
    if name in ("load_pipeline", "Zero123PlusPipeline", "DEFAULT_MODEL_ID", "composite_on_gray"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "ReferenceAttnProcessor":
        from .attention import ReferenceAttnProcessor

        return ReferenceAttnProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
