"""A trained model opened for rendering: the one way visualize.py, evaluate.py and the exporters
pick a complete saved step, load it, and learn the run's frame count T."""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from gs_renderer import GaussianModel4D
from stag4d.config import RunConfig, saved_run_config
from stag4d.data.frames import list_ref_frames
from stag4d.errors import DataError, UserError
from stag4d.training.runs import find_saved_step


@dataclass
class SavedModel:
    """A loaded step of a run.

    Attributes:
        folder, step: the step folder and its step.
        model: the 4D Gaussians (eval mode).
        num_frames: T, the run's frame count (frame i is at time i / T).
        trained: the run's own config (its config.yaml), or None when absent or unreadable.
    """

    folder: str
    step: int
    model: GaussianModel4D
    num_frames: int
    trained: Optional[RunConfig]


def frame_count(cfg: RunConfig, trained: Optional[RunConfig], folder: str) -> int:
    """T: ``num_frames`` here, else the run's config, its frames/ folder, the dataset's ref/ (this
    config's ``path``, or the run's), in this order."""
    exported = glob.glob(os.path.join(folder, "frames", "*.ply"))
    if cfg.data.num_frames is not None:
        return cfg.data.num_frames
    if trained is not None and trained.data.num_frames is not None:
        if exported and len(exported) != trained.data.num_frames:
            raise DataError(f"{folder}/config.yaml says num_frames={trained.data.num_frames} but the run exported "
                            f"{len(exported)} frames: pass num_frames= to choose, or fix the file")
        return trained.data.num_frames
    if exported:
        return len(exported)
    for path in (cfg.data.path, trained.data.path if trained is not None else ""):
        if path and os.path.isdir(os.path.join(path, "ref")):
            return len(list_ref_frames(path))
    raise UserError(f"cannot tell the frame count T of the run in {folder}: add num_frames=T "
                    "(or path=dataset/NAME with its ref/ frames)")


def warn_camera_differences(cfg: RunConfig, trained: Optional[RunConfig], folder: str) -> None:
    """Print a warning when the cameras or the frame count here differ from the run's."""
    if trained is None:
        return
    pairs = {key: (getattr(cfg.camera, key), getattr(trained.camera, key))
             for key in ("elevation", "radius", "fovy", "anchor_views")}
    pairs["num_frames"] = (cfg.data.num_frames, trained.data.num_frames)
    for key, (here, there) in pairs.items():
        if here != there and not (key == "num_frames" and here is None):
            print(f"warning: {key}={here} here but the run was trained with {key}={there} "
                  f"({folder}/config.yaml): pass {key}= to match", file=sys.stderr)


def open_saved_model(cfg: RunConfig, load_step: Optional[int], device: torch.device) -> SavedModel:
    """The complete step ``load_step`` (None: the latest) of the run ``<outdir>/<save_path>``."""
    folder, step = find_saved_step(os.path.join(cfg.output.outdir, cfg.output.save_path), load_step)
    trained = saved_run_config(folder)
    warn_camera_differences(cfg, trained, folder)
    num_frames = frame_count(cfg, trained, folder)
    model = GaussianModel4D.load(folder, device)
    model.eval()
    return SavedModel(folder, step, model, num_frames, trained)


__all__ = ["SavedModel", "frame_count", "open_saved_model", "warn_camera_differences"]
