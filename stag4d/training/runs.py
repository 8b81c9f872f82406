"""Saved runs on disk: ``<outdir>/<save_path>/<step>/`` folders, and the one rule for picking one.

A step folder holds ``model.ply``, ``deformation.pt``, ``config.yaml``, ``frames/`` and, written
LAST, ``checkpoint.pt``: a folder is complete (listed, loaded, rendered) only when its
checkpoint exists, so a save killed half way is never used.
"""
from __future__ import annotations

import glob
import os
from typing import Optional

from gs_renderer import MODEL_FILES
from stag4d.errors import DataError

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
LOSSES_FILE = "losses.csv"


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


__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "LOSSES_FILE", "find_saved_step", "is_complete_step", "run_folder",
           "saved_steps"]
