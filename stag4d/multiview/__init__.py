"""Zero123++ multi-view anchors with STAG4D's temporal anchor (SPEC section 9).

The multi-view generator behind ``scripts/gen_mv.py`` (:mod:`stag4d.multiview.gen_mv`):

* :func:`~stag4d.multiview.pipeline.load_pipeline`: Zero123++ v1.1 from a hub id or a local diffusers
  folder, with reference attention; ``pipe(rgb_on_grey, steps=75, guidance_scale=4.0, seed=42,
  anchor=...) -> uint8 [960, 640, 3]``; ``pipe.generate([rgb, ...], ...)`` denoises several frames as
  one batch, each with its own seeded generator.
* :class:`TemporalAnchor` (``temporal_anchor.py``): records frame 0's self-attention key/value
  inputs and blends them into later frames; modes ``record`` / ``replay`` / ``off``.
* :class:`ReferenceAttnProcessor` (``attention.py``): the attention processor that implements
  both.

Importing this package imports torch only; diffusers and transformers are imported when a
pipeline is loaded or a processor is built.
"""
from __future__ import annotations

from .temporal_anchor import AnchorMismatch, TemporalAnchor, record_bytes, self_attention_tokens

__all__ = ["AnchorMismatch", "TemporalAnchor", "record_bytes", "self_attention_tokens"]
