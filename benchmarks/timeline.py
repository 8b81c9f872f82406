"""Where a pipelined step's GPU idles, from a torch.profiler chrome trace (CPU + CUDA activities).

A step whose kernels take less time than the step leaves the GPU idle: the host was late to launch
the next kernel (Python and launch overhead, or a host sync that drained the queue first). This reads
an exported trace and says how much, and where: every gap on the GPU timeline (between the end of
all earlier kernels and the start of the next kernel, any stream) is charged to the host-side phase
(a ``record_function`` label, e.g. the trainer's step methods) that LAUNCHED that next kernel, found
through the launch's correlation id. Host time per phase (the labels' own durations) says where the
host's time goes.

    python benchmarks/timeline.py TRACE.json[.gz] [--steps N] [--phases a,b,...] [--rows 15]

``bench_train_step.py --timeline N`` records such a trace of N steps and prints this report.
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
from collections import defaultdict

KERNEL_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")


def load_trace(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def idle_report(events: list[dict], steps: int, phases: list[str], rows: int = 15) -> str:
    """The report (markdown) of a trace of ``steps`` steps; ``phases``: the annotation names to
    charge gaps to (innermost wins), e.g. the trainer's phase labels."""
    kernels = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS), key=lambda e: e["ts"])
    if not kernels:
        return "no device kernels in the trace"
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})}
    wanted = set(phases)
    spans = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                    if e.get("ph") == "X" and e.get("cat") == "user_annotation" and e["name"] in wanted),
                   key=lambda s: s[0])
    starts = [s[0] for s in spans]
    host_ms: dict[str, float] = defaultdict(float)
    for begin, end, name in spans:
        host_ms[name] += (end - begin) / 1000.0

    def phase_at(ts: float) -> str:
        # the innermost labelled span holding ts: walking back from the last span that starts by
        # ts, the first one that still covers it (labels nest, so it started last)
        i = bisect.bisect_right(starts, ts) - 1
        for j in range(i, max(-1, i - 64), -1):
            if spans[j][1] >= ts:
                return spans[j][2]
        return "(outside the phases)"

    idle: dict[str, float] = defaultdict(float)
    gap_count: dict[str, int] = defaultdict(int)
    biggest: list[tuple[float, str, str]] = []
    busy = 0.0
    covered_until = kernels[0]["ts"]
    for k in kernels:
        start, end = k["ts"], k["ts"] + k.get("dur", 0)
        if start > covered_until:
            gap = start - covered_until
            launch = launches.get(k.get("args", {}).get("correlation"))
            phase = phase_at(launch["ts"]) if launch else "(launch not found)"
            idle[phase] += gap / 1000.0
            gap_count[phase] += 1
            biggest.append((gap / 1000.0, phase, k["name"][:70]))
            busy += end - start
            covered_until = end
        elif end > covered_until:
            busy += end - covered_until
            covered_until = end
    window = (covered_until - kernels[0]["ts"]) / 1000.0
    busy_ms = busy / 1000.0
    lines = [f"GPU timeline over {steps} steps: first kernel to last {window / steps:.2f} ms per step, kernels busy "
             f"{busy_ms / steps:.2f} ms, idle {(window - busy_ms) / steps:.2f} ms ({100 * (1 - busy_ms / window):.1f}%)",
             "| phase (launched the kernel after the gap) | idle ms per step | gaps per step | host ms per step |",
             "|---|---|---|---|"]
    for phase in sorted(set(idle) | set(host_ms), key=lambda p: -idle.get(p, 0.0)):
        lines.append(f"| {phase} | {idle.get(phase, 0.0) / steps:.2f} | {gap_count.get(phase, 0) / steps:.0f} "
                     f"| {host_ms.get(phase, 0.0) / steps:.2f} |")
    biggest.sort(reverse=True)
    lines += ["", f"the {rows} longest gaps (ms, phase, the kernel after it):"]
    lines += [f"  {gap:.3f}  {phase}  {name}" for gap, phase, name in biggest[:rows]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--phases", default="", help="comma-separated annotation names (default: all)")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    events = load_trace(args.trace)
    phases = [p for p in args.phases.split(",") if p] or sorted(
        {e["name"] for e in events if e.get("cat") == "user_annotation"})
    print(idle_report(events, args.steps, phases, args.rows))


if __name__ == "__main__":
    main()
