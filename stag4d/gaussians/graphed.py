"""The deformation field's forward and backward replayed from CUDA graphs (``cuda_graph_deformation``).

The fine stage's step is host-bound on a GPU: the device finishes each small kernel before the
host has launched the next. The deformation field alone is about 60 kernels forward and 150
autograd nodes backward (the HexPlane samples and products, the MLP and its heads), so a replay
of the captured kernels spares the host most of that launching. The captured kernels are the ones
eager mode runs (``torch.cuda.make_graphed_callables``), so the results are eager's.

Rules, each for a reason:

* Only calls that need a gradient are graphed (training); renders for validation, the viewers and
  saves run eagerly.
* One graph pair per input shape (number of Gaussians, number of times, which inputs need a
  gradient). Densification changes the number of Gaussians: the graphs of other sizes are then
  dropped, which frees their memory.
* A graph's outputs and gradients live in static buffers that its next replay overwrites, so each
  graph serves ONE call per training step (:meth:`GraphedDeformation.begin_step` starts a step); a
  second call of the same shape in that step runs eagerly.
* The graphs read the field's parameters where they were at capture: when one is replaced
  (``load_state_dict(assign=True)``, a new tensor) every graph is dropped and captured again.
* The capture sees the field's parameters as detached aliases (same memory, leaves of their own),
  and each replay is handed the parameters themselves. The autograd nodes that accumulate a
  parameter's gradient are then made by the step that uses them, on the step's stream. Captured
  with the parameters themselves, the graphs' saved outputs would keep the nodes that
  ``make_graphed_callables`` made on its side stream alive, and every replayed step would
  accumulate each gradient across streams (an event and a wait each, and a warning).
* Only the first capture warms up ``warmup`` times (the side stream's one-time set-up: handles,
  workspaces, the autograd threads); a recapture for a new number of Gaussians warms up
  ``recapture_warmup`` times.
* A failed capture warns once and turns graphing off (eager from then on): it is an optimization
  and must not end a run.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from stag4d.cuda_graphs import stream_mismatch_warning_off
from stag4d.gaussians.deformation import DeformationField, DeformationOutput


class _FieldTensors:
    """The field as a function of tensors only, its parameters included (what a graphed callable
    takes): ``(means, log_scales, quats, times[, opacity_logits], *parameters)`` -> a tuple of
    tensors. The parameters given are used in place of the field's own (``functional_call``)."""

    def __init__(self, field: DeformationField, num_inputs: int):
        self.field = field
        self.num_inputs = num_inputs
        self.names = [name for name, _ in field.named_parameters()]

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        means, log_scales, quats, times, *opacity_logits = tensors[:self.num_inputs]
        parameters = dict(zip(self.names, tensors[self.num_inputs:], strict=True))
        out = torch.func.functional_call(
            self.field, parameters, (means, log_scales, quats, opacity_logits[0] if opacity_logits else None, times))
        extra = (out.opacity_logits,) if out.opacity_logits is not None else ()
        return (out.means, out.log_scales, out.quats) + extra


class GraphedDeformation:
    """Call it as the :class:`DeformationField` it wraps (same arguments, same output); see the
    module docstring.

    Args:
        field: the deformation field (its parameters are read by the graphs, so they must be
            updated in place, as the optimizer does).
        warmup: eager iterations on a side stream before the first capture (CUDA graphs need them).
        recapture_warmup: the same before each later capture.
        capture: ``torch.cuda.make_graphed_callables`` (replaceable in tests).
    """

    def __init__(self, field: DeformationField, warmup: int = 3, recapture_warmup: int = 1,
                 capture: Optional[Callable[..., Any]] = None):
        self.field = field
        self.warmup = warmup
        self.recapture_warmup = recapture_warmup
        self.capture = capture if capture is not None else torch.cuda.make_graphed_callables
        self.graphs: dict[tuple, Callable[..., tuple[Tensor, ...]]] = {}
        self.used: set[tuple] = set()  # graphs replayed since begin_step
        self.parameter_storage: tuple[int, ...] = ()  # where the field's parameters were at the captures
        self.enabled = True
        self.captures = 0  # graph pairs captured so far (a count for logs and tests)

    def begin_step(self) -> None:
        """A new training step: the previous step's backward is done, every graph may replay again."""
        self.used.clear()

    def __call__(self, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Optional[Tensor],
                 times: Tensor) -> DeformationOutput:
        use_opacity = self.field.cfg.deform_opacity and opacity_logits is not None
        inputs = (means, log_scales, quats, times) + ((opacity_logits,) if use_opacity else ())
        if not (self.enabled and torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
            return self.field(means, log_scales, quats, opacity_logits, times)
        parameters = tuple(self.field.parameters())  # one walk of the module tree per call: this is the step
        storage = tuple(p.data_ptr() for p in parameters)
        if storage != self.parameter_storage:  # a parameter was replaced: the graphs would read the old one
            self.graphs.clear()
            self.parameter_storage = storage
        key = tuple((tuple(x.shape), x.dtype, x.requires_grad) for x in inputs)
        if key in self.used:  # its static outputs still feed this step's backward
            return self.field(means, log_scales, quats, opacity_logits, times)
        graphed = self.graphs.get(key)
        if graphed is None:
            graphed = self._capture(key, inputs)
            if graphed is None:
                return self.field(means, log_scales, quats, opacity_logits, times)
        self.used.add(key)
        out = graphed(*inputs, *parameters)
        return DeformationOutput(means=out[0], log_scales=out[1], quats=out[2],
                                 opacity_logits=out[3] if use_opacity else None)

    def _capture(self, key: tuple, inputs: tuple[Tensor, ...]):
        num_gaussians = key[0][0][0]
        # densification changed the number of Gaussians: the old sizes are unlikely to come back
        for old in [k for k in self.graphs if k[0][0][0] != num_gaussians]:
            del self.graphs[old]
        samples = tuple(x.detach().clone().requires_grad_(x.requires_grad) for x in inputs)
        aliases = tuple(p.detach().requires_grad_(p.requires_grad) for p in self.field.parameters())
        try:
            # allow_unused_input: the opacity head's parameters get no gradient unless deform_opacity
            with stream_mismatch_warning_off():
                graphed = self.capture(_FieldTensors(self.field, len(inputs)), samples + aliases,
                                       num_warmup_iters=self.warmup if self.captures == 0 else self.recapture_warmup,
                                       allow_unused_input=True)
        except Exception as err:  # capture is an optimization: fall back to eager
            warnings.warn(f"cuda_graph_deformation: capture failed ({type(err).__name__}: {err}); eager deformation "
                          "from now on")
            self.enabled = False
            self.graphs.clear()
            return None
        self.graphs[key] = graphed
        self.captures += 1
        return graphed


__all__ = ["GraphedDeformation"]
