"""Timing helpers shared by the benchmark scripts: per-call milliseconds after warm-up, percentiles."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch


def time_calls(fn: Callable[[], Any], cuda: bool, warmup: int, repeats: int) -> tuple[list[float], Any]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls, and the last result.

    On CUDA each call is timed with CUDA events on an idle device (synchronized before and after),
    so a call's time includes its launch cost; on CPU with ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeats):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            result = fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            begin = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return times, result


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
