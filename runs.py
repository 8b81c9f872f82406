"""Saved runs on disk: ``<outdir>/<save_path>/<step>/`` folders and how to pick one."""
from __future__ import annotations

import glob
import os
from typing import Optional

from errors import DataError

MODEL_FILES = ("model.ply", "deformation.pt")


def saved_steps(run_folder: str) -> list[int]:
    """Sorted steps under ``run_folder`` that hold a loadable model (model.ply and deformation.pt)."""
    steps = []
    for folder in glob.glob(os.path.join(run_folder, "*")):
        name = os.path.basename(folder)
        if name.isdigit() and all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES):
            steps.append(int(name))
    return sorted(steps)


def find_model_folder(run_folder: str, load_step: Optional[int] = None) -> tuple[str, int]:
    """(folder, step) of a saved model: ``load_step``, or the latest saved step.

    Raises:
        DataError: nothing saved there (lists the runs next to it) or no such step (lists the
            saved steps); one line.
    """
    steps = saved_steps(run_folder)
    if not steps:
        parent = os.path.dirname(os.path.normpath(run_folder)) or "."
        runs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(parent, "*")) if saved_steps(p))
        found = f"runs with a saved model in {parent}/: {', '.join(runs)}" if runs else f"no saved runs in {parent}/"
        raise DataError(
            f"no saved model under {run_folder} (<step>/model.ply + deformation.pt); {found}; "
            "train with main.py first or fix save_path="
        )
    if load_step is None:
        return os.path.join(run_folder, str(steps[-1])), steps[-1]
    if load_step not in steps:
        raise DataError(f"{os.path.join(run_folder, str(load_step))} holds no saved model; saved steps: "
                        f"{', '.join(map(str, steps))} (pick one with load_step= or omit it for the latest)")
    return os.path.join(run_folder, str(load_step)), load_step
