"""Running one stage of one clip: the entry point in its own process, inside a Ray task.

A subprocess per stage isolates the stages (memory, CUDA context, global state of the model
libraries) and lets a killed worker take its stage down with it (the child asks the kernel for
SIGKILL when its parent dies). The stage's whole output goes to its log file; the table gets one
line: the entry point's ``error: ...`` line (``exit_on_user_error``), else the last line it printed.

Stage processes killed by a signal (the out-of-memory killer, a lost node) raise
:class:`StageKilled`, which the Ray task retries like a lost worker; a stage that exits with an
error is not retried (it would fail the same way).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from typing import Sequence

import ray

import stag4d
from stag4d.batch.records import StageRecord, write_record
from stag4d.batch.stages import StageJob
from stag4d.errors import file_tail, last_error_message

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StageKilled(RuntimeError):
    """The stage's process died from a signal: retried by Ray (``retry_exceptions``)."""


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGKILL when the parent (the Ray worker) dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: no such guard
        return
    if os.getppid() != parent:  # the parent died before the guard was set
        os._exit(1)


def stage_environment(num_cpus: float, num_gpus: float) -> dict[str, str]:
    """The environment of a stage process: this checkout's package first on the path, threads =
    the CPUs Ray gave the task, and no GPU unless Ray gave one (it then set CUDA_VISIBLE_DEVICES)."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(stag4d.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    threads = str(max(1, int(num_cpus)))
    env["OMP_NUM_THREADS"] = threads
    env["MKL_NUM_THREADS"] = threads
    if num_gpus <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_process(command: Sequence[str], log_file: str, cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` with its output in ``log_file``; (exit code, one-line message when it failed).

    A negative exit code is the signal that killed it.
    """
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    parent = os.getpid()
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=cwd, env=env, preexec_fn=lambda: _die_with_parent(parent))
        try:
            code = process.wait()
        except BaseException:  # cancelled or interrupted: take the stage down too
            process.kill()
            process.wait()
            raise
    if code == 0:
        return 0, ""
    if code < 0:
        return code, f"killed by {signal.Signals(-code).name}"
    return code, last_error_message(file_tail(log_file))


def execute_stage(job: StageJob) -> StageRecord:
    """Run one stage now (where Ray placed it) and write its record; complete outputs are not redone."""
    node = socket.gethostname()
    if job.target.complete():  # a retry after an attempt that finished just before its worker was lost
        return StageRecord("done", node=node)
    if not os.path.isdir(job.cwd):
        return StageRecord("failed", node=node, error=f"working folder {job.cwd} does not exist on {node}: run the "
                                                      "batch from a folder every node has (same path)")
    start = time.perf_counter()
    code, message = run_process(job.command(), job.log_file, job.cwd, stage_environment(job.num_cpus, job.num_gpus))
    wall = time.perf_counter() - start
    if code < 0:
        raise StageKilled(f"{message} (log: {job.log_file})")
    record = StageRecord("ok", wall, wall * job.num_gpus, node=node)
    if code != 0:
        record.status, record.error = "failed", message
    elif not job.target.complete():
        record.status, record.error = "failed", f"finished but its outputs are incomplete (log: {job.log_file})"
    write_record(job.clip_dir, job.stage, record)
    return record


@ray.remote
def stage_task(job: StageJob) -> StageRecord:
    """The Ray task of one (clip, stage); resources are set per call with ``.options``."""
    return execute_stage(job)


def submit(job: StageJob, retries: int) -> ray.ObjectRef:
    """Start ``job`` on the cluster with its resources; lost workers and killed stages are retried."""
    return stage_task.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=retries,
                              retry_exceptions=[StageKilled], name=f"{job.clip}:{job.stage}").remote(job)


__all__ = ["StageKilled", "execute_stage", "run_process", "stage_environment", "stage_task", "submit"]
