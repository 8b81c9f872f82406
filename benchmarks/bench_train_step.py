"""Benchmark the real trainer's step in the faithful setting, with full-size Zero123 guidance.

The zero123-xl architecture is built from its configs (guidance/random_model.py) with RANDOM
weights (no weights can be downloaded here), fp16 on CUDA: the same compute as the real model.
The trainer is ``trainer.Trainer`` with ``configs/stag4d.yaml``, on a real dataset.

    # per-step median in the issue's setting: fine stage, 512x512 renders, batch 4,
    # 10k Gaussians, no densification (the step counter is placed after the densification window)
    python benchmarks/bench_train_step.py --path ../shared/data/minions --steps 30
    # several settings side by side (one guidance build; each --variant is NAME:key=value ...)
    python benchmarks/bench_train_step.py --path ../shared/data/minions \
        --variant "eager: guidance_compile=false guidance_channels_last=false guidance_cudnn_benchmark=false" \
        --variant "defaults:"
    # where the device time goes (kernels; ops with their shapes) and the host syncs of a step
    python benchmarks/bench_train_step.py --path ../shared/data/minions --trace 5 --trace-ops 3 --syncs 3
    # where the GPU idles in a pipelined step, by the phase that launched the kernel after each gap
    # (also writes the chrome trace: OUTDIR/timeline_SETTING.json.gz; benchmarks/timeline.py reads it)
    python benchmarks/bench_train_step.py --path ../shared/data/minions --timeline 5
    # the whole default schedule (8000 steps with resolution schedule and densification), wall time
    python benchmarks/bench_train_step.py --path ../shared/data/minions --full

Per setting it prints median / p10 / p90 of per-step milliseconds (CUDA events around each whole
step; within a step the host runs ahead of the device as in training) after warm-up, peak memory, and a phase breakdown from a
separate PROFILING PASS: ``timing.PhaseTimer`` hooks the trainer's step methods (``deform``,
``render_views``, ``backward`` ...) and the guidance's VAE encoder and UNet, synchronizes the
device around each and times it on the host, so a phase's time is its device time plus its
launch cost. The synchronized step is slower than a pipelined one; "other" is the synchronized
step time outside the named phases (loss arithmetic, sampling, stacking).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from timeline import idle_report, load_trace, sync_report
from timing import PhaseTimer, parse_variant, percentile, time_calls

from guidance.random_model import build_random_components
from guidance.zero123 import Zero123Guidance
from stag4d.config import load_config
from stag4d.training.trainer import Trainer

# what the profiling pass times: the trainer's step methods and the guidance's two networks
TRAINER_PHASES = {"deform": "deformation", "render_views": "renders", "compute_losses": "losses (SDS inside)",
                  "backward": "backward", "optimizer_step": "optimizer", "densify_step": "densification"}
GUIDANCE_PHASES = {"encode_images": "  of which VAE encode", "predict_noise": "  of which UNet"}

def build_guidance(args):
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return Zero123Guidance(build_random_components(device, args.tiny), device, dtype, guidance_scale=5.0)


def build_trainer(args, guide, overrides: list[str]):
    """A trainer over ``guide`` whose speed options are set from the config (guidance keys included)."""
    cfg = load_config(args.config, [f"path={args.path}", "save_path=bench_train_step", f"device={args.device}",
                                    f"outdir={args.outdir}", f"valid_dir={args.outdir}/valid", *overrides])
    guide.optimize_from_config(cfg.guidance)
    return Trainer(cfg, guidance=guide)


def phase_breakdown(trainer, steps: int) -> dict[str, float]:
    """Milliseconds per step of each phase over ``steps`` synchronized steps (:class:`timing.PhaseTimer`)."""
    timer = PhaseTimer(trainer.device)
    timer.wrap(trainer, TRAINER_PHASES)
    if trainer.guidance is not None:
        timer.wrap(trainer.guidance, GUIDANCE_PHASES)
    try:
        for _ in range(steps):
            with timer.step():
                trainer.train_step()
    finally:
        timer.unwrap()
    # the guidance runs inside compute_losses: its phases are part of that one, not beside it
    return timer.per_step(nested=tuple(GUIDANCE_PHASES.values()))


def timeline(trainer, steps: int, path: str, rows: int) -> str:
    """Profile ``steps`` pipelined steps (no syncs added: :class:`timing.PhaseTimer` only labels the
    phases), write the chrome trace to ``path`` and report where the GPU idles
    (:func:`timeline.idle_report`) and where the host waited for it (:func:`timeline.sync_report`)."""
    from torch.profiler import ProfilerActivity, profile

    labels = PhaseTimer(trainer.device, synchronize=False)
    labels.wrap(trainer, TRAINER_PHASES)
    if trainer.guidance is not None:
        labels.wrap(trainer.guidance, GUIDANCE_PHASES)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                trainer.train_step()
            torch.cuda.synchronize()
    finally:
        labels.unwrap()
    prof.export_chrome_trace(path)
    events, phases = load_trace(path), [*TRAINER_PHASES.values(), *GUIDANCE_PHASES.values()]
    return f"trace {path}\n{idle_report(events, steps, phases, rows)}\n\n{sync_report(events, steps, phases, rows)}"


def kernel_table(trainer, steps: int, rows: int, cuda: bool) -> str:
    """The ``rows`` device kernels (CPU ops without CUDA) taking the most time over ``steps`` steps
    under torch.profiler: per kernel, total and per-step milliseconds and its share of the listed
    whole. Where a phase's time goes, kernel by kernel (e.g. the backward's)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    lines = [f"top {rows} kernels over {steps} steps (all kernels together {total / 1000 / steps:.1f} ms per step)",
             "| kernel | calls per step | ms per step | share |", "|---|---|---|---|"]
    for e in events[:rows]:
        name = e.key if len(e.key) <= 90 else e.key[:87] + "..."
        lines.append(f"| `{name}` | {e.count / steps:.0f} | {getattr(e, key) / 1000 / steps:.2f} "
                     f"| {100 * getattr(e, key) / total:.1f}% |")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """"/long/path/pkg/mod.py(12): fn" -> "pkg/mod.py(12): fn"."""
    path, _, rest = frame.partition("(")
    return "/".join(path.split("/")[-2:]) + ("(" + rest if rest else "")


def _calling_lines(event) -> str:
    """"innermost Python frame <- innermost frame in this repository" above a profiler event
    (its ``cpu_parent`` chain; with ``with_stack`` the Python frames are events too). Backward
    ops run on autograd's thread, under no Python frame; on CUDA (torch 2.11) the profiler linked
    no op to a Python frame at all, so there the shapes have to tell where an op comes from."""
    frames, parent = [], event.cpu_parent
    while parent is not None:
        if ".py(" in parent.name:
            frames.append(parent.name)
        parent = parent.cpu_parent
    if not frames:
        return "(no Python frame)"
    ours = next((f for f in frames if "/stag4d/" in f or "/guidance/" in f), None)
    inner = _short(frames[0])
    return inner if ours is None or ours == frames[0] else f"{inner} <- {_short(ours)}"


def op_table(trainer, steps: int, rows: int, cuda: bool) -> str:
    """The ``rows`` (op, input shapes, calling lines) groups taking the most device time (CPU time
    without CUDA) over ``steps`` steps: which line of our code, or of gsplat's, launches the
    costly kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True, with_stack=True) as prof:
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    groups: dict[tuple, list[float]] = {}
    for event in prof.events():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us <= 0 or event.device_type != torch.autograd.DeviceType.CPU:
            continue
        shapes = ",".join("x".join(map(str, shape)) for shape in event.input_shapes if shape)[:60]
        name = _short(event.name) if ".py(" in event.name else event.name  # a Python frame's own launches
        group = groups.setdefault((name, shapes, _calling_lines(event)), [0.0, 0])
        group[0] += us
        group[1] += 1
    total = sum(g[0] for g in groups.values())
    lines = [f"top {rows} ops by self {'device' if cuda else 'CPU'} time over {steps} steps "
             f"({total / 1000 / steps:.1f} ms per step in all)",
             "| op | input shapes | called from | calls per step | ms per step |", "|---|---|---|---|---|"]
    for (name, shapes, where), (us, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:rows]:
        lines.append(f"| `{name}` | {shapes} | {where[:120]} | {count / steps:.0f} | {us / 1000 / steps:.2f} |")
    return "\n".join(lines)


def sync_table(trainer, steps: int, rows: int) -> str:
    """Host syncs per step (``torch.cuda.set_sync_debug_mode``), by the line that caused them:
    each one drains the GPU's queue, which then idles while the host launches the next kernels."""
    import traceback
    import warnings

    counts: dict[str, int] = {}
    original = warnings.showwarning

    def where(frame) -> str:
        return f"{'/'.join(frame.filename.split('/')[-2:])}:{frame.lineno}"

    def record(message, category, filename, lineno, file=None, line=None):
        stack = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        inner = where(stack[-1]) if stack else "?"
        ours = next((f"{where(f)} {f.name}" for f in reversed(stack)
                     if "/stag4d/" in f.filename or "/guidance/" in f.filename), "?")
        key = f"{inner} <- {ours}"
        counts[key] = counts.get(key, 0) + 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = original
    lines = [f"host syncs: {sum(counts.values()) / steps:.1f} per step over {steps} steps",
             "| where (innermost <- our code) | per step |", "|---|---|"]
    for key, count in sorted(counts.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"| {key} | {count / steps:.1f} |")
    return "\n".join(lines)


def run_full(args, guide, overrides: list[str], cuda: bool, startup_s: float) -> None:
    """The whole schedule through ``Trainer.train`` (validation and saves as configured), with the
    wall time of every ``--segment`` steps (one device sync per segment)."""
    t0 = time.perf_counter()
    trainer = build_trainer(args, guide, overrides)
    startup_s += time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    marks = [(0, time.perf_counter(), trainer.model.num)]
    step_once = trainer.train_step

    def timed_step():
        result = step_once()
        if trainer.step % args.segment == 0:
            if cuda:
                torch.cuda.synchronize()
            marks.append((trainer.step, time.perf_counter(), trainer.model.num))
            (s0, t0_, _), (s1, t1_, n1) = marks[-2], marks[-1]
            # streamed on a line of its own (tqdm's bar ends with no newline); a run cut short keeps them
            print(f"\n[segment] steps {s0}-{s1}: {t1_ - t0_:.1f} s, {1000.0 * (t1_ - t0_) / (s1 - s0):.1f} ms/step, "
                  f"{n1} Gaussians, {t1_ - marks[0][1] + startup_s:.1f} s since start", flush=True)
        return result

    trainer.train_step = timed_step
    t1 = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t1
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"overrides: {' '.join(overrides) or '(none)'}")
    print("| mode | start-up s | training s | total s | steps | Gaussians | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| full schedule | {startup_s:.1f} | {train_s:.1f} | {startup_s + train_s:.1f} | {trainer.step} "
          f"| {trainer.model.num} | {peak:.2f} |")
    print("\n| steps | wall s | ms/step | Gaussians at end |")
    print("|---|---|---|---|")
    for (s0, t0_, _), (s1, t1_, n1) in zip(marks, marks[1:]):
        print(f"| {s0}-{s1} | {t1_ - t0_:.1f} | {1000.0 * (t1_ - t0_) / (s1 - s0):.1f} | {n1} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="../shared/data/minions")
    parser.add_argument("--config", default="configs/stag4d.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--start-step", type=int, default=7000,
                        help="step counter before timing: fine stage, ratio 1 (512 renders), past densification")
    parser.add_argument("--trace", type=int, default=0,
                        help="also profile this many steps per setting and list its top kernels (torch.profiler)")
    parser.add_argument("--trace-rows", type=int, default=25)
    parser.add_argument("--trace-ops", type=int, default=0,
                        help="also list the ops (with shapes and calling lines) taking the most device time over this many steps")
    parser.add_argument("--timeline", type=int, default=0,
                        help="CUDA: also profile this many pipelined steps and say where the GPU idles, by phase")
    parser.add_argument("--syncs", type=int, default=0,
                        help="CUDA: also count host syncs per step over this many steps, by the line causing them")
    parser.add_argument("--full", action="store_true", help="run the whole default schedule and print wall time")
    parser.add_argument("--segment", type=int, default=500, help="--full: steps per timed segment")
    parser.add_argument("--tiny", action="store_true", help="tiny guidance (smoke test of this script on CPU)")
    parser.add_argument("--outdir", default="/tmp/bench_train_step")
    parser.add_argument("--variant", action="append", default=[],
                        help='"NAME: key=value ...": a setting timed side by side with the others (repeatable)')
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. num_pts=10000 batch_size=4")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    common = list(args.overrides)

    t0 = time.perf_counter()
    guide = build_guidance(args)
    startup_s = time.perf_counter() - t0
    if args.full:
        run_full(args, guide, common, cuda, startup_s)
        return

    variants = [parse_variant(v) for v in args.variant] or [("config", [])]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    rows, breakdowns = [], {}
    for label, extra in variants:
        trainer = build_trainer(args, guide, common + extra)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        trainer.step = args.start_step
        t1 = time.perf_counter()
        try:
            times, _ = time_calls(trainer.train_step, cuda, args.warmup, args.steps)
        except Exception as err:  # one setting that fails (e.g. a compile error) leaves the others' rows
            print(f"[{label}] failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", flush=True)
            del trainer
            continue
        warm_s = time.perf_counter() - t1
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        breakdowns[label] = phase_breakdown(trainer, args.profile_steps)
        if args.trace:
            print(f"[{label}] " + kernel_table(trainer, args.trace, args.trace_rows, cuda), flush=True)
        if args.trace_ops:
            print(f"[{label}] " + op_table(trainer, args.trace_ops, args.trace_rows, cuda), flush=True)
        if args.timeline and cuda:
            path = f"{args.outdir}/timeline_{label.replace(' ', '_')}.json.gz"
            print(f"[{label}] " + timeline(trainer, args.timeline, path, args.trace_rows), flush=True)
        if args.syncs and cuda:
            print(f"[{label}] " + sync_table(trainer, args.syncs, args.trace_rows), flush=True)
        rows.append((label, extra, statistics.median(times), percentile(times, 0.1), percentile(times, 0.9), peak,
                     warm_s, trainer.model.num))
        # streamed as each setting finishes (a long run cut short keeps what it measured)
        print(f"[{label}] step ms median {statistics.median(times):.1f} p10 {percentile(times, 0.1):.1f} "
              f"p90 {percentile(times, 0.9):.1f} peak {peak:.2f} GiB; synchronized phases ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in breakdowns[label].items()), flush=True)
        del trainer
        if cuda:
            torch.cuda.empty_cache()

    print(f"device: {name}; common overrides: {' '.join(common) or '(none)'}; "
          f"{args.steps} timed steps after {args.warmup} warm-up from step {args.start_step}; "
          f"guidance build {startup_s:.1f} s")
    print("| setting | overrides | Gaussians | step ms median | p10 | p90 | peak GiB | warm-up+timed s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, extra, med, p10, p90, peak, warm_s, num in rows:
        print(f"| {label} | {' '.join(extra) or '-'} | {num} | {med:.1f} | {p10:.1f} | {p90:.1f} | {peak:.2f} "
              f"| {warm_s:.1f} |")
    print(f"\nphase breakdown: {args.profile_steps} synchronized steps per setting (CUDA synchronize before and "
          "after each phase, host wall time; not pipelined, so the phases sum to more than the step median)")
    phases = list(dict.fromkeys(p for b in breakdowns.values() for p in b))
    print("| phase | " + " | ".join(f"{label} ms" for label in breakdowns) + " |")
    print("|---|" + "---|" * len(breakdowns))
    for phase in phases:
        print(f"| {phase} | " + " | ".join(f"{b.get(phase, 0.0):.1f}" for b in breakdowns.values()) + " |")


if __name__ == "__main__":
    main()
