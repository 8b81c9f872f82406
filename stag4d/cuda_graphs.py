"""What the CUDA-graph captures share (``GraphedDeformation``, the guidance's ``GraphedEncoder``)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def stream_mismatch_warning_off() -> Iterator[None]:
    """torch's "AccumulateGrad node's stream does not match" warning off for a
    ``make_graphed_callables`` capture, back on after it.

    The capture warms up on one side stream and records on another, so the AccumulateGrad nodes of
    its sample inputs get their gradients from a stream that is not theirs, once per capture: the
    warning (a dozen lines in every run's output, saying this may break CUDA graph capture) would
    describe that one-time hand-over, not the training steps. Off for the capture only, so a
    mismatch in the steps is still reported. torch has no getter for the setting: it is turned
    back on, its default.
    """
    set_warning = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if set_warning is None:  # an older torch: no such warning
        yield
        return
    set_warning(False)
    try:
        yield
    finally:
        set_warning(True)


__all__ = ["stream_mismatch_warning_off"]
