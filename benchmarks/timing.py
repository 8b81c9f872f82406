"""Timing helpers shared by the benchmark scripts: per-call milliseconds after warm-up, percentiles,
per-phase times of a profiling pass (:class:`PhaseTimer`, hooked onto methods from outside), and
the ``"NAME: key=value ..."`` variants that scripts time side by side (:func:`parse_variant`)."""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

import torch
from torch.profiler import record_function


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


def parse_variant(text: str, option: str = "--variant") -> tuple[str, list[str]]:
    """``"NAME: key=value ..."`` -> (NAME, the config overrides); a malformed one ends the script in one
    line naming ``option`` (a missing colon would otherwise time the defaults under a wrong name)."""
    name, colon, rest = text.partition(":")
    overrides = rest.split()
    bad = [item for item in overrides if "=" not in item]
    if not colon or not name.strip() or bad:
        sys.exit(f"error: {option} {text!r}: write it as 'NAME: KEY=VALUE ...'"
                 + (f" ({bad[0]!r} is not KEY=VALUE)" if bad else ""))
    return name.strip(), overrides


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class PhaseTimer:
    """Honest per-phase times of a profiling pass, hooked onto the methods of the objects measured.

    :meth:`wrap` replaces named methods of an object (instance attributes, so the class and the
    training code are untouched) by timed versions: the device is drained (``synchronize``) before
    and after each call, so a phase's host wall time is its device time plus its launch cost
    (backward included: autograd's kernels run on another thread, which profiler labels miss).
    Only for measurement: the synchronizations remove the host/device overlap of a normal step, so
    the phases sum to more than the pipelined step time. ``other`` is the synchronized step time
    outside every phase (loss arithmetic, sampling, stacking). ``synchronize=False``: the phases
    only labelled (``record_function``) for a profile of the pipelined step, their totals host time.
    """

    def __init__(self, device: torch.device | str, synchronize: bool = True):
        self.synchronize = torch.device(device).type == "cuda" and synchronize
        self.totals: dict[str, float] = defaultdict(float)
        self.step_total = 0.0
        self.steps = 0
        self.wrapped: list[tuple[Any, str]] = []

    def _sync(self) -> None:
        if self.synchronize:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        with record_function(name):
            yield
        self._sync()
        self.totals[name] += (time.perf_counter() - start) * 1000.0

    def wrap(self, obj: Any, phases: dict[str, str]) -> None:
        """Time ``obj.<method>`` as phase ``label`` for every ``method: label`` of ``phases``."""
        for method, label in phases.items():
            original = getattr(obj, method)

            @functools.wraps(original)
            def timed(*args, _original=original, _label=label, **kwargs):
                with self.phase(_label):
                    return _original(*args, **kwargs)

            setattr(obj, method, timed)
            self.wrapped.append((obj, method))

    def unwrap(self) -> None:
        """Give every wrapped object its own methods back."""
        for obj, method in self.wrapped:
            delattr(obj, method)
        self.wrapped = []

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Around one whole step: its synchronized time (phases + everything between them)."""
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.step_total += (time.perf_counter() - start) * 1000.0
        self.steps += 1

    def per_step(self, nested: tuple[str, ...] = ()) -> dict[str, float]:
        """Milliseconds per step of every phase, plus ``other`` and the synchronized step.

        ``nested``: phases that run inside another phase (not subtracted again for ``other``).
        """
        steps = max(1, self.steps)
        result = {name: total / steps for name, total in self.totals.items()}
        outer = sum(v for k, v in result.items() if k not in nested)
        result["other"] = max(0.0, self.step_total / steps - outer)
        result["step (synchronized)"] = self.step_total / steps
        return result
