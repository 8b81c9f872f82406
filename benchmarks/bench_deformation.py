"""Benchmark: the deformation field's forward + backward, eager against its CUDA graphs
(``cuda_graph_deformation``), at the default field's size.

    python benchmarks/bench_deformation.py [--sizes 10000,20000] [--times 4] [--calls 60]

Per number of Gaussians: the first graphed call (warm-up iterations and the capture), then, side
by side and again in the same order, the median over ``--calls`` (after 10 not counted) of

* host ms: the Python and launch time of one forward + backward (the device not waited for);
  in the training step, which is host-bound, this is what a call costs;
* synchronized ms: the same with the device synchronized after it (its kernels included).

The process first imports what main.py imports (the guidance's diffusers and transformers, the
trainer, inductor), so that a capture pays for the garbage collection of a real process's heap
(``torch.cuda.graph`` collects before capturing); the collection's time is printed first.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import time

import torch

import guidance.zero123  # noqa: F401  (a realistic heap, see above)
import stag4d.training.trainer  # noqa: F401
from stag4d.gaussians.deformation import DeformationConfig, DeformationField
from stag4d.gaussians.graphed import GraphedDeformation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,20000", help="numbers of Gaussians, comma-separated")
    parser.add_argument("--times", type=int, default=4, help="times per call (the step's batch)")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per row (the first 10 not counted)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the graphs are CUDA only)")
    importlib.import_module("torch._inductor.compile_fx")  # imported by main.py's torch.compile calls

    gc.collect()
    start = time.perf_counter()
    gc.collect()
    print(f"gc.collect {1e3 * (time.perf_counter() - start):.1f} ms, {len(gc.get_objects())} objects")
    field = DeformationField(DeformationConfig()).cuda()
    for n in (int(s) for s in args.sizes.split(",")):
        means = torch.randn(n, 3, device="cuda").mul_(0.3).requires_grad_()
        log_scales = torch.randn(n, 3, device="cuda").requires_grad_()
        quats = torch.randn(n, 4, device="cuda").requires_grad_()
        times = torch.rand(args.times, device="cuda")
        graphed = GraphedDeformation(field)

        def run(fn) -> None:
            out = fn(means, log_scales, quats, None, times)
            (out.means.sum() + out.log_scales.sum() + out.quats.sum()).backward()
            for p in [means, log_scales, quats, *field.parameters()]:
                p.grad = None

        for name, fn in (("eager", field), ("graphed", graphed), ("eager again", field), ("graphed again", graphed)):
            if fn is graphed and "again" not in name:
                torch.cuda.synchronize()
                start = time.perf_counter()
                graphed.begin_step()
                run(graphed)
                torch.cuda.synchronize()
                print(f"N={n}: first graphed call (capture) {1e3 * (time.perf_counter() - start):.0f} ms")
            walls = []
            for _ in range(args.calls):
                if fn is graphed:
                    graphed.begin_step()
                torch.cuda.synchronize()
                start = time.perf_counter()
                run(fn)
                host = time.perf_counter() - start
                torch.cuda.synchronize()
                walls.append((host, time.perf_counter() - start))
            walls = walls[10:]
            print(f"N={n} {name}: host {1e3 * statistics.median(w[0] for w in walls):.2f} ms, "
                  f"synchronized {1e3 * statistics.median(w[1] for w in walls):.2f} ms per forward + backward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
