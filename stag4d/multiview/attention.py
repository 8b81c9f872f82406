"""Zero123++ reference attention as a diffusers attention processor.

Every denoising step runs the UNet twice (see :mod:`stag4d.multiview.pipeline`):

1. the *reference pass* over the noised condition latent, ``ref_mode="write"``: each
   self-attention (``attn1``) stores its key/value input (its own hidden states) in ``ref_store``
   under its layer name, and attends as usual;
2. the *main pass* over the latents being denoised, ``ref_mode="read"``: each ``attn1`` attends
   from its hidden states ``[B, L, C]`` to ``cat(hidden states, ref_store.pop(layer))``
   ``[B, L + Lr, C]``. A :class:`~stag4d.multiview.temporal_anchor.TemporalAnchor` passed as
   ``anchor`` may rewrite the first ``L`` tokens of that key/value input (STAG4D); ``frames`` tells
   it how many frames the batch holds (branch-major, see the anchor).

The state moves only through the arguments of each UNet call (``cross_attention_kwargs``): the
store is a fresh dict per step, the anchor is the caller's object. Cross-attention layers
(``attn2``) ignore these arguments.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

READ, WRITE = "read", "write"


class ReferenceAttnProcessor:
    """Attention processor of one UNet attention layer.

    Args:
        name: the layer's key in ``unet.attn_processors`` (also the key in the reference store
            and in the temporal anchor's records).
        enabled: True for self-attention layers (names ending in ``attn1.processor``).
        inner: the processor that computes attention; diffusers' ``AttnProcessor2_0`` (scaled
            dot-product attention) by default. It receives the final key/value input as
            ``encoder_hidden_states``, which also makes it the place to observe it in tests.
    """

    def __init__(self, name: str, enabled: bool, inner: Optional[Callable] = None):
        if inner is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            inner = AttnProcessor2_0()
        self.name = name
        self.enabled = enabled
        self.inner = inner

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        ref_mode: Optional[str] = None,
        ref_store: Optional[dict] = None,
        anchor: Optional[Callable] = None,
        step: Optional[int] = None,
        frames: int = 1,
    ) -> torch.Tensor:
        """Attention output [B, L, C]; ``hidden_states`` [B, L, C] are the query input."""
        if not self.enabled or ref_mode is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        kv_input = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if ref_mode == WRITE:
            ref_store[self.name] = kv_input
        elif ref_mode == READ:
            kv_input = torch.cat([kv_input, ref_store.pop(self.name)], dim=1)
            if anchor is not None:
                kv_input = anchor(self.name, step, kv_input, own_tokens=hidden_states.shape[1], frames=frames)
        else:
            raise ValueError(f"ref_mode must be {READ!r}, {WRITE!r} or None, got {ref_mode!r}")
        return self.inner(attn, hidden_states, kv_input, attention_mask, temb)


def install_reference_attention(unet) -> dict[str, ReferenceAttnProcessor]:
    """Give every attention layer of ``unet`` a :class:`ReferenceAttnProcessor`; returns them by name.

    Reference attention is enabled in the self-attention layers only, as in Zero123++.
    """
    processors = {
        name: ReferenceAttnProcessor(name, enabled=name.endswith("attn1.processor"))
        for name in unet.attn_processors
    }
    unet.set_attn_processor(dict(processors))
    return processors
