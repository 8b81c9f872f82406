"""Saved runs on disk: ``<outdir>/<save_path>/<step>/`` folders, the one rule for picking one, and
the one writer a run folder has at a time.

A step folder holds ``model.ply``, ``deformation.pt``, ``config.yaml``, ``frames/`` and, written
LAST, ``checkpoint.pt``: a folder is complete (listed, loaded, rendered) only when its
checkpoint exists, so a save killed half way is never used.

A training run holds ``<run>/.lock`` (its process id, host and start time) while it writes: a
second run with the same ``save_path`` stops with one line instead of mixing its steps and
losses with the first's. A lock whose process is gone (killed) is taken over.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Optional

from gs_renderer import MODEL_FILES
from stag4d.errors import DataError, UserError
from stag4d.files import atomic_path, remove_temporary_files
from stag4d.settings import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
LOSSES_FILE = "losses.csv"
LOCK_FILE = ".lock"
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def check_run_name(name: str, key: str = "save_path") -> None:
    """A run name is one folder name: letters, digits, ``_ . + -``, not starting with a dot (so it
    cannot leave ``outdir``: no ``..``, no separators, no absolute paths, no variables)."""
    if not RUN_NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"{key}={name!r} is not a run name: use letters, digits and _ . + - (one folder under "
                        "outdir; no '/', '..', '~' or ${...})")


def is_complete_step(folder: str) -> bool:
    """The folder holds a whole save: the model files and, written last, the checkpoint."""
    return all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES + (CHECKPOINT_FILE,))


def saved_steps(run_folder: str) -> list[int]:
    """Sorted steps under ``run_folder`` whose folder is complete (:func:`is_complete_step`)."""
    steps = []
    for folder in glob.glob(os.path.join(run_folder, "*")):
        name = os.path.basename(folder)
        if name.isdigit() and is_complete_step(folder):
            steps.append(int(name))
    return sorted(steps)


def run_folder(outdir: str, name: str) -> str:
    """``name`` as a folder when it is one, else the run ``<outdir>/<name>``."""
    return name if os.path.isdir(name) and not os.path.isdir(os.path.join(outdir, name)) else os.path.join(outdir, name)


def find_saved_step(run: str, step: Optional[int] = None) -> tuple[str, int]:
    """(folder, step) of a complete save under the run folder ``run``: ``step``, or the latest.

    ``run`` may also be a step folder itself (it holds a checkpoint): that step, when ``step`` is
    None or equal to it.

    Raises:
        DataError: nothing saved there (lists the runs next to it) or no such step (lists the
            saved steps); one line.
    """
    name = os.path.basename(os.path.normpath(run))
    if name.isdigit() and is_complete_step(run) and step in (None, int(name)):
        return run, int(name)
    steps = saved_steps(run)
    if not steps:
        parent = os.path.dirname(os.path.normpath(run)) or "."
        runs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(parent, "*")) if saved_steps(p))
        found = f"runs with a saved model in {parent}/: {', '.join(runs)}" if runs else f"no saved runs in {parent}/"
        raise DataError(f"no complete saved step under {run} (<step>/ with {' + '.join(MODEL_FILES)} + "
                        f"{CHECKPOINT_FILE}); {found}; train with main.py first or fix save_path=")
    if step is None:
        return os.path.join(run, str(steps[-1])), steps[-1]
    if step not in steps:
        raise DataError(f"{os.path.join(run, str(step))} is not a complete saved step; saved steps: "
                        f"{', '.join(map(str, steps))} (pick one with load_step= or omit it for the latest)")
    return os.path.join(run, str(step)), step


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    """``<run>/.lock``: the one process that trains into a run folder (see the module docstring).

    Re-entrant within a process (a resumed Trainer in the same process may take it again).
    Released by :meth:`release`, and at interpreter exit.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.held = False

    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    break  # this process already holds it
                if holder.get("host") == me["host"] and not _process_alive(int(holder.get("pid", -1))):
                    print(f"note: taking over {self.path} of process {holder.get('pid')}, which is gone",
                          file=sys.stderr)
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                raise UserError(f"{self.folder} is being written by process {holder.get('pid')} on "
                                f"{holder.get('host')} (since {holder.get('since')}): wait for it to finish, or "
                                "choose another save_path=") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        self.held = True
        atexit.register(self.release)

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False


def prepare_run_folder(folder: str, resume_step: Optional[int], overwrite: bool) -> None:
    """Make ``folder`` ready for a run that starts at ``resume_step`` (None: a new run).

    A new run in a folder that holds complete saves needs ``overwrite`` (which deletes them and the
    losses); temporary files of killed saves are deleted; ``losses.csv`` keeps only the rows up to
    the step the run resumes from.

    Raises:
        UserError: the folder holds a finished run and neither resume nor overwrite was asked for.
    """
    steps = saved_steps(folder)
    name = os.path.basename(os.path.normpath(folder))
    if resume_step is None and steps:
        if not overwrite:
            raise UserError(f"{folder} already holds a run (saved steps {', '.join(map(str, steps))}): continue "
                            f"it with load_path={name}, replace it with overwrite=true, or choose another save_path=")
        for step_folder in glob.glob(os.path.join(folder, "*")):
            if os.path.basename(step_folder).isdigit() and os.path.isdir(step_folder):
                shutil.rmtree(step_folder)
    remove_temporary_files(folder)
    trim_losses(os.path.join(folder, LOSSES_FILE), resume_step or 0)


def trim_losses(path: str, last_step: int) -> None:
    """Keep the rows of ``losses.csv`` up to ``last_step`` (0: none; the header is rewritten later)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = [line for line in lines[1:] if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) <= last_step]
    if last_step == 0 or not lines:
        os.remove(path)
        return
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join([lines[0]] + kept) + "\n")


def losses_header(path: str) -> list[str]:
    """The columns of ``losses.csv`` ([] when there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return f.readline().strip().split(",")


def write_losses_header(path: str, header: list[str]) -> None:
    """Start ``losses.csv`` with ``header``; rows already there are kept, their cells moved to the
    columns of the same name (a column the old header lacks stays empty)."""
    rows: list[dict[str, str]] = []
    if os.path.isfile(path):
        with open(path) as f:
            lines = f.read().splitlines()
        if lines:
            old = lines[0].split(",")
            rows = [dict(zip(old, line.split(","))) for line in lines[1:] if line]
    text = "\n".join([",".join(header)] + [",".join(row.get(k, "") for k in header) for row in rows]) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def delete_old_saves(folder: str, keep: int) -> list[int]:
    """Delete all but the ``keep`` latest complete saves (0 keeps all); returns the steps deleted."""
    if keep <= 0:
        return []
    old = saved_steps(folder)[:-keep]
    for step in old:
        shutil.rmtree(os.path.join(folder, str(step)), ignore_errors=True)
    return old


__all__ = ["LOCK_FILE", "RunLock", "check_run_name", "delete_old_saves", "prepare_run_folder", "trim_losses",
           "losses_header", "write_losses_header",
           "CHECKPOINT_FILE", "CONFIG_FILE", "LOSSES_FILE", "find_saved_step", "is_complete_step", "run_folder",
           "saved_steps"]
