"""The batch driver: every clip's stages as Ray tasks, in order per clip, clips in parallel.

The driver plans every clip (arguments checked before Ray starts), then keeps one task in flight
per clip: a stage whose complete outputs exist is recorded ``done`` without a task, the next one
is submitted, and when it returns the driver records it, rewrites the table and submits the
clip's next stage; a failure blocks the rest of that clip only. Ray places each task where its
resources are free (``num_gpus`` for gen_mv and training when the cluster has GPUs), so one GPU
runs the clips' training one after another, several GPUs or machines run them side by side, and
CPU stages of one clip overlap the training of another.

Resuming is a rerun: completed stages are found on disk (the rules in :mod:`stag4d.batch.stages`),
a partial training run continues from its last complete step, and Ray retries a task whose worker
or stage process was killed (``--retries``).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import ray
from tqdm import tqdm

from stag4d.batch.clips import Clip
from stag4d.batch.execute import StageKilled, submit
from stag4d.batch.records import SETTLED, StageRecord, read_record
from stag4d.batch.results import TABLE_MARKDOWN, write_table
from stag4d.batch.stages import BatchSettings, ClipPlan, give_gpus, plan_clip
from stag4d.errors import UserError

LOCK_FILE = ".batch.lock"
PROGRESS_REFRESH_S = 1.0


@dataclass
class RayOptions:
    """Where the tasks run: ``address`` of a running cluster, or a local instance started here."""

    address: Optional[str] = None  # None: start a local Ray instance (stopped at the end)
    num_cpus: Optional[int] = None  # local instance only; None = all
    num_gpus: Optional[int] = None  # local instance only; None = all
    retries: int = 2  # Ray retries of a task whose worker or stage process died


@dataclass
class BatchRun:
    """The state of a batch: the plans, the stage records of each clip and the tasks in flight."""

    settings: BatchSettings
    plans: list[ClipPlan]
    records: dict[str, dict[str, StageRecord]] = field(default_factory=dict)  # this run's, per clip
    earlier: dict[str, dict[str, StageRecord]] = field(default_factory=dict)  # earlier runs' (for times)
    remaining: dict[str, list[str]] = field(default_factory=dict)  # stages still to run, per clip
    in_flight: dict = field(default_factory=dict)  # ObjectRef -> (clip, stage, time submitted)

    @property
    def total(self) -> int:
        return len(self.plans) * len(self.settings.stages)

    def finished_count(self) -> int:
        return sum(1 for recs in self.records.values() for r in recs.values() if r.status in SETTLED)


@contextlib.contextmanager
def batch_lock(out: str) -> Iterator[None]:
    """One batch at a time per output folder (released by the kernel if the driver dies)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_FILE)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"another batch is writing to {out} (pid {lock.read().strip() or '?'}): wait for it, "
                            "or give another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Ray as asked: already initialized (kept), ``address`` (joined, then left) or a local instance."""
    if ray.is_initialized():
        yield
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        if options.address:
            ray.init(address=options.address, **kwargs)
        else:
            ray.init(num_cpus=options.num_cpus, num_gpus=options.num_gpus, **kwargs)
    except ConnectionError as err:
        raise UserError(f"--address {options.address}: cannot join the Ray cluster ({err}); start it with "
                        "`ray start --head`, give its token if it uses one (RAY_AUTH_MODE=token RAY_AUTH_TOKEN=..., "
                        "see `ray get-auth-token`), or leave --address out to run here") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(settings: BatchSettings) -> bool:
    """Whether the cluster has GPUs; a task that could never be placed is a one-line error."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if settings.cpus_per_task > cpus:
        raise UserError(f"--cpus-per-task {settings.cpus_per_task:g} but the cluster has {cpus:g} CPUs: ask for fewer")
    if 0 < gpus < settings.gpus_per_task:
        raise UserError(f"--gpus-per-task {settings.gpus_per_task:g} but the cluster has {gpus:g} GPUs: ask for fewer")
    return gpus > 0


def _start_next(run: BatchRun, plan: ClipPlan, retries: int) -> None:
    """Record the clip's stages that need no task; submit the first one that does."""
    name = plan.clip.name
    records, earlier = run.records[name], run.earlier[name]
    while run.remaining[name]:
        stage = run.remaining[name].pop(0)
        if stage in plan.not_applicable:
            records[stage] = StageRecord("n/a")
        elif plan.jobs[stage].target.complete():
            before = earlier.get(stage)
            kept = before is not None and before.status in ("ok", "done")
            records[stage] = StageRecord("done", *((before.wall_s, before.gpu_s, None, before.node, before.finished)
                                                   if kept else ()))
        else:
            records[stage] = StageRecord("queued")
            run.in_flight[submit(plan.jobs[stage], retries)] = (name, stage, time.time())
            return


def task_record(ref, retries: int) -> StageRecord:
    """The task's record; a task Ray gave up on (retries spent, node lost) as a failed one."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        if isinstance(cause, StageKilled):
            return StageRecord("failed", error=f"{cause} (after {retries} retries)")
        lines = str(cause).strip().splitlines()
        return StageRecord("failed", error=f"{type(cause).__name__}: {lines[-1] if lines else ''}")
    except ray.exceptions.RayError as err:
        return StageRecord("failed", error=f"Ray lost the task ({type(err).__name__}) after {retries} retries")


def _describe_running(run: BatchRun) -> str:
    running = [f"{clip}:{stage}" for clip, stage, _ in run.in_flight.values()
               if run.records[clip][stage].status == "running"]
    return ", ".join(running[:4]) + (f" +{len(running) - 4}" if len(running) > 4 else "")


def _mark_running(run: BatchRun, plans: dict[str, ClipPlan]) -> bool:
    """Mark queued stages whose task has started (it opens the stage's log); whether any changed."""
    changed = False
    for clip, stage, submitted in run.in_flight.values():
        record = run.records[clip][stage]
        log = plans[clip].jobs[stage].log_file
        if record.status == "queued" and os.path.exists(log) and os.path.getmtime(log) >= submitted - 1.0:
            record.status, changed = "running", True
    return changed


def run_batch(clips: Sequence[Clip], settings: BatchSettings, options: Optional[RayOptions] = None,
              progress: bool = True) -> list[dict]:
    """Run the stages of every clip; returns the table rows (the mean row last, when any clip is ok).

    The clips are planned (every argument checked) before Ray starts, so a bad one costs no start-up.
    """
    options = options or RayOptions()
    plans = [plan_clip(clip, settings) for clip in clips]
    with batch_lock(settings.out):
        to_run = any(not job.target.complete() for plan in plans if not plan.error for job in plan.jobs.values())
        # nothing to run (a rerun of a finished batch): the table without starting Ray
        with ray_session(options) if to_run else contextlib.nullcontext():
            if to_run and check_resources(settings):
                give_gpus(plans, settings)
            run = BatchRun(settings, plans)
            for plan in plans:
                name = plan.clip.name
                run.records[name] = {}
                run.earlier[name] = {stage: record for stage in settings.stages
                                     if (record := read_record(settings.clip_dir(name), stage)) is not None}
                run.remaining[name] = [] if plan.error else list(settings.stages)
            return _drive(run, options.retries, progress)


def _drive(run: BatchRun, retries: int, progress: bool) -> list[dict]:
    settings, plans = run.settings, run.plans
    by_name = {plan.clip.name: plan for plan in plans}
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    where = f"on {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs" if resources else "all complete"
    print(f"batch: {len(plans)} clips x {len(settings.stages)} stages ({', '.join(settings.stages)}) {where}; "
          f"table: {os.path.join(settings.out, TABLE_MARKDOWN)}", file=sys.stderr)

    def write() -> list[dict]:
        return write_table(settings.out, plans, run.records, settings.stages)

    with tqdm(total=run.total, desc="batch", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        try:
            for plan in plans:
                if plan.error:
                    tqdm.write(f"{plan.clip.name}: {plan.error}", file=sys.stderr)
                    run.records[plan.clip.name] = {stage: StageRecord("blocked") for stage in settings.stages}
                else:
                    _start_next(run, plan, retries)
            bar.update(run.finished_count() - bar.n)
            write()
            while run.in_flight:
                ready, _ = ray.wait(list(run.in_flight), num_returns=1, timeout=PROGRESS_REFRESH_S)
                for ref in ready:
                    clip, stage, _ = run.in_flight.pop(ref)
                    records = run.records[clip]
                    records[stage] = result = task_record(ref, retries)
                    seconds = f" in {result.wall_s:.1f} s" if result.wall_s is not None else ""
                    tqdm.write(f"{clip}: {stage} {result.status}{seconds}"
                               + (f": {result.error}" if result.error else ""), file=sys.stderr)
                    if result.status == "failed":
                        records.update({later: StageRecord("blocked") for later in run.remaining[clip]})
                        run.remaining[clip] = []
                    _start_next(run, by_name[clip], retries)
                started = _mark_running(run, by_name)
                bar.update(run.finished_count() - bar.n)
                bar.set_postfix_str(_describe_running(run))
                if ready or started:
                    write()
        except KeyboardInterrupt:
            for ref in run.in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            for clip, stage, _ in run.in_flight.values():
                run.records[clip][stage] = StageRecord("interrupted")
            table = write()
    return table


__all__ = ["BatchRun", "RayOptions", "batch_lock", "check_resources", "run_batch", "task_record"]
