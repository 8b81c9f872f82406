"""Where a pipelined step's GPU idles, from a torch.profiler chrome trace (CPU + CUDA activities).

A step whose kernels take less time than the step leaves the GPU idle: the host was late to launch
the next kernel (Python and launch overhead, or a host sync that drained the queue first). This reads
an exported trace and says how much, and where: every gap on the GPU timeline (between the end of
all earlier kernels and the start of the next kernel, any stream) is charged to the host-side phase
(a ``record_function`` label, e.g. the trainer's step methods) that LAUNCHED that next kernel, found
through the launch's correlation id. Host time per phase (the labels' own durations) says where the
host's time goes. :func:`sync_report` lists where the host waited for the device (synchronizing
runtime calls, by the CPU op and phase around them).

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
    spans, starts = _phase_spans(events, phases)
    host_ms: dict[str, float] = defaultdict(float)
    for begin, end, name in spans:
        host_ms[name] += (end - begin) / 1000.0

    def phase_at(ts: float) -> str:
        return _innermost(spans, starts, ts, "(outside the phases)")

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


# runtime and driver calls after which the host has waited for the device (torch's pageable copies
# and .item() end in cudaStreamSynchronize; a plain cudaMemcpy waits by itself)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpy", "cuMemcpyDtoH",
              "cuMemcpyDtoH_v2", "cuMemcpyHtoD", "cuMemcpyHtoD_v2")


def _phase_spans(events: list[dict], phases: list[str]) -> tuple[list[tuple[float, float, str]], list[float]]:
    """The ``phases`` annotations as (start, end, name) sorted by start, outer first, and their starts."""
    wanted = set(phases)
    spans = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                    if e.get("ph") == "X" and e.get("cat") == "user_annotation" and e["name"] in wanted),
                   key=lambda s: (s[0], -s[1]))
    return spans, [s[0] for s in spans]


def _innermost(spans: list[tuple[float, float, str]], starts: list[float], ts: float, default: str) -> str:
    """The name of the innermost span (sorted by start, outer first) holding ``ts``: walking back
    from the last one that starts by ``ts``, the first that still covers it (spans nest, so it
    started last)."""
    i = bisect.bisect_right(starts, ts) - 1
    for j in range(i, max(-1, i - 256), -1):
        if spans[j][1] >= ts:
            return spans[j][2]
    return default


def sync_report(events: list[dict], steps: int, phases: list[str], rows: int = 15) -> str:
    """Where the host waited for the device (markdown): every synchronizing runtime call of the trace
    (:data:`SYNC_CALLS`), by the innermost CPU op around it (e.g. ``aten::_local_scalar_dense`` for
    ``.item()``, ``aten::copy_`` for a pageable copy), its phase and its thread, with the time the host
    spent in it. Unlike ``torch.cuda.set_sync_debug_mode`` it also sees syncs made inside extensions
    and in C++ contexts without a Python warning handler."""
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
               for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    ops: dict[tuple, list[tuple[float, float, str]]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op":
            ops[(e.get("pid"), e.get("tid"))].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"]))
    for spans in ops.values():
        spans.sort(key=lambda s: (s[0], -s[1]))  # an op and the first op inside it may start together
    op_starts = {key: [s[0] for s in spans] for key, spans in ops.items()}
    phase_spans, phase_starts = _phase_spans(events, phases)
    count: dict[tuple[str, str, str], int] = defaultdict(int)
    wait_ms: dict[tuple[str, str, str], float] = defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in LAUNCH_CATS or e.get("name") not in SYNC_CALLS:
            continue
        key = (e.get("pid"), e.get("tid"))
        op = _innermost(ops.get(key, []), op_starts.get(key, []), e["ts"], "(no CPU op)")
        phase = _innermost(phase_spans, phase_starts, e["ts"], "(outside the phases)")
        thread = threads.get(key) or f"thread {e.get('tid')}"
        where = (f"{e['name']} in {op}", phase, thread)
        count[where] += 1
        wait_ms[where] += e.get("dur", 0) / 1000.0
    total = sum(count.values())
    lines = [f"host syncs over {steps} steps: {total / steps:.1f} per step, the host waiting "
             f"{sum(wait_ms.values()) / steps:.2f} ms per step in them",
             "| call in the innermost CPU op | phase | thread | per step | wait ms per step |", "|---|---|---|---|---|"]
    for where in sorted(count, key=lambda w: -wait_ms[w])[:rows]:
        call, phase, thread = where
        lines.append(f"| {call} | {phase} | {thread} | {count[where] / steps:.1f} | {wait_ms[where] / steps:.2f} |")
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
    print()
    print(sync_report(events, args.steps, phases, args.rows))


if __name__ == "__main__":
    main()
