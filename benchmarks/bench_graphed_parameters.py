"""Benchmark: how the deformation field's CUDA graphs are given its parameters, side by side.

    python benchmarks/bench_graphed_parameters.py [--num-gaussians 24000] [--blocks 5]

* ``aliases``: :class:`GraphedDeformation` as it is: the capture gets detached aliases of the
  parameters (same memory) and each replay the parameters themselves, so the AccumulateGrad nodes
  are made by each step, on its stream;
* ``module``: ``torch.cuda.make_graphed_callables`` given the field module itself (the code before
  the aliases): its warm-up and capture make the parameters' AccumulateGrad nodes on their own
  stream and its static outputs keep them alive, so each replayed step accumulates every
  gradient across streams;
* ``eager``: the field without graphs.

Order: aliases, eager, module, then aliases again with a new capture (after the module's graphs
are freed: while they live, its nodes are the parameters' nodes for any caller). Each row: host
milliseconds per forward + backward (gradients of the default field at 4 times, the device
synchronized at the end of each block of 100 calls), median of ``--blocks`` after 20 calls not
counted; and how many gradients were accumulated across streams (torch's warning, made to fire
every time), the capture's own included.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import torch
from torch import nn

from stag4d.gaussians.deformation import DeformationConfig, DeformationField
from stag4d.gaussians.graphed import GraphedDeformation

MISMATCH = "AccumulateGrad node's stream"


class _FieldModule(nn.Module):
    def __init__(self, field: DeformationField):
        super().__init__()
        self.field = field

    def forward(self, means, log_scales, quats, times):
        out = self.field(means, log_scales, quats, None, times)
        return out.means, out.log_scales, out.quats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-gaussians", type=int, default=24000)
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    field = DeformationField(DeformationConfig()).cuda()
    n = args.num_gaussians
    means = (torch.rand(n, 3, device="cuda") - 0.5).requires_grad_()
    log_scales = torch.randn(n, 3, device="cuda").requires_grad_()
    quats = torch.randn(n, 4, device="cuda").requires_grad_()
    times = torch.tensor([0.1, 0.4, 0.6, 0.9], device="cuda")
    leaves = [means, log_scales, quats, *field.parameters()]

    def block(call, calls: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            for leaf in leaves:
                leaf.grad = None
            out = call()
            (out[0].sum() + out[1].sum() + out[2].sum()).backward()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls * 1e3

    def measure(name: str, call) -> None:
        warn_always = torch.is_warn_always_enabled()
        torch.set_warn_always(True)
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                block(call, 20)
                ms = [block(call, 100) for _ in range(args.blocks)]
        finally:
            torch.set_warn_always(warn_always)
        mismatches = sum(MISMATCH in str(w.message) for w in record)
        print(f"{name:16s} {statistics.median(ms):7.3f} ms  (blocks {', '.join(f'{t:.3f}' for t in ms)}); "
              f"gradients accumulated across streams: {mismatches}", flush=True)

    def graphed_call(graphed: GraphedDeformation):
        def call():
            graphed.begin_step()
            out = graphed(means, log_scales, quats, None, times)
            return out.means, out.log_scales, out.quats
        return call

    print(f"{n} Gaussians, {len(times)} times, host ms per forward + backward, median of {args.blocks} blocks of 100")
    measure("aliases", graphed_call(GraphedDeformation(field)))
    eager = _FieldModule(field)
    measure("eager", lambda: eager(means, log_scales, quats, times))
    samples = tuple(x.detach().clone().requires_grad_() for x in (means, log_scales, quats)) + (times.clone(),)
    module = torch.cuda.make_graphed_callables(_FieldModule(field), samples, num_warmup_iters=3,
                                               allow_unused_input=True)
    measure("module", lambda: module(means, log_scales, quats, times))
    del module
    gc.collect()
    measure("aliases again", graphed_call(GraphedDeformation(field)))


if __name__ == "__main__":
    main()
