"""What a viewer drives: a live trainer or a saved model, behind one interface.

Both sessions answer ``device``, ``step``, ``num_frames``, ``reference``, ``frame_time``,
``gaussians_at`` (the Gaussians at a time, for the browser's splats), ``render`` (our rasterizer),
``screenshot_dir`` and ``status``; a :class:`TrainingSession` also trains (``start``, ``stop``,
``train``, ``save``). The trainer is driven only through its public methods.
"""
from __future__ import annotations

import os
import time as time_module
from typing import Any, Optional

import torch

from cam_utils import Camera
from stag4d.rasterizer import GaussianParams, RenderOutput, render

DEFAULT_PLAY_FRAMES = 30  # time steps per clip when the number of frames is unknown


class TrainingSession:
    """A ``trainer.Trainer`` seen by the viewer: train k steps at a time, render, save.

    Steps run only through the trainer's public ``train_step`` / ``save`` / ``render`` /
    ``gaussians_at``. It saves on the config's ``save_step`` schedule, and stops (and saves) at
    ``total_steps``, like ``Trainer.train``; validation renders are left to headless runs.
    """

    can_train = True

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.total_steps = trainer.cfg.train.total_steps
        self.save_step = trainer.cfg.output.save_step
        self.running = False
        self.num_gaussians = int(trainer.model.num)
        self.last_saved_step: Optional[int] = None
        self._losses: dict[str, float] = {}
        self._pending: Optional[dict[str, Any]] = None  # the last step's losses, still on the device
        self._seconds_per_step = 0.0
        self._window_start = 0.0  # wall clock at the first step since the last read-back
        self._window_steps = 0

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    @property
    def step(self) -> int:
        return int(self.trainer.step)

    @property
    def num_frames(self) -> Optional[int]:
        return int(self.trainer.num_frames)

    @property
    def reference(self) -> Optional[torch.Tensor]:
        """Reference frames [T, 3, S, S] on white."""
        return self.trainer.data.ref_rgb

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def frame_time(self, frame: int) -> float:
        return float(self.trainer.frame_time(frame))

    def start(self) -> None:
        self.running = not self.finished

    def stop(self) -> None:
        self.running = False

    def train(self, steps: int) -> int:
        """Up to ``steps`` training steps (fewer at ``total_steps``); returns how many ran.

        Nothing waits for the device here: the losses are read back when they are looked at
        (:attr:`losses`, :attr:`seconds_per_step`, :meth:`status`), so a front end that shows them
        a few times a second costs a few host syncs a second, not one per step.
        """
        done = 0
        result: dict[str, Any] = {}
        save_step = self.save_step
        for _ in range(max(0, int(steps))):
            if self.finished:
                break
            if self._window_steps == 0:
                self._window_start = time_module.perf_counter()
            result = self.trainer.train_step()
            done += 1
            self._window_steps += 1
            if save_step and self.step % save_step == 0:
                # on the trainer's writer thread (background_writes), so the view does not stall
                self.save(wait=not self.trainer.cfg.output.background_writes)
        if done:
            self._pending = result
            self.num_gaussians = int(result.get("num_gaussians", self.trainer.model.num))
        if self.finished:
            self.running = False
            if self.last_saved_step != self.step:
                self.save()
        return done

    def _read_back(self) -> None:
        """The last step's losses as numbers (waits for the device), and the wall time per step
        of the steps since the previous read-back."""
        if self._pending is not None:
            self._losses = {k: float(v) for k, v in self._pending.items() if isinstance(v, torch.Tensor)}
            self._pending = None
        if self._window_steps:
            self._seconds_per_step = (time_module.perf_counter() - self._window_start) / self._window_steps
            self._window_steps = 0

    @property
    def losses(self) -> dict[str, float]:
        """The losses of the last step trained."""
        self._read_back()
        return self._losses

    @property
    def seconds_per_step(self) -> float:
        """Wall time per step (training and what the viewer did between steps) over the steps
        trained between the last two read-backs; 0 before any step."""
        self._read_back()
        return self._seconds_per_step

    def save(self, wait: bool = True) -> str:
        """Save the current step; with ``wait`` (a user's save) its files exist on return."""
        folder = self.trainer.save(wait=wait)
        self.last_saved_step = self.step
        return folder

    def save_on_close(self) -> Optional[str]:
        """When the viewer closes: save the steps trained since the last save (returns the folder),
        and wait for the saves still being written."""
        folder = self.save() if self.unsaved else None
        self.trainer.writer.wait()
        return folder

    @property
    def unsaved(self) -> bool:
        """Steps were trained since the last save (or since the start, when the run never saved)."""
        return self.step > 0 and self.last_saved_step != self.step

    def gaussians_at(self, time: Optional[float], scale: float = 1.0) -> GaussianParams:
        return self.trainer.gaussians_at(time, float(scale))

    def render(self, camera: Camera, time: Optional[float], scale: float = 1.0) -> RenderOutput:
        return self.trainer.render(camera, time, background=(1.0, 1.0, 1.0), scale_modifier=float(scale))

    def screenshot_dir(self) -> str:
        return os.path.join(self.trainer.run_folder, "viewer")

    def status(self) -> dict[str, str]:
        losses = "\n".join(f"  {k}: {v:.5g}" for k, v in sorted(self.losses.items())) or "  (none yet)"
        return {
            "step": f"step: {self.step} / {self.total_steps}" + ("  (running)" if self.running else ""),
            "losses": "losses:\n" + losses,
            "gaussians": f"Gaussians: {self.num_gaussians}",
            "speed": f"ms per step: {1000.0 * self.seconds_per_step:.1f}" if self.seconds_per_step else "ms per step: -",
        }


class SavedModelSession:
    """A trained ``GaussianModel4D`` (view only).

    Args:
        model: the loaded model (``GaussianModel4D.load``).
        backend: the rasterizer backend (``auto``, ``torch``, ``gsplat``).
        num_frames: T of the run (None: unknown, the time slider plays 30 steps per clip).
        data: ``FrameData`` for the reference overlay, or None (its frame count wins).
        folder: where "save PNG" writes.
    """

    can_train = False
    running = False

    def __init__(self, model: Any, backend: str = "auto", num_frames: Optional[int] = None, data: Any = None,
                 folder: str = "viewer"):
        self.model = model
        self.data = data
        self.backend = backend
        self.folder = folder
        frames = data.num_frames if data is not None else num_frames
        self._num_frames = int(frames) if frames else None
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def step(self) -> int:
        return 0

    @property
    def num_frames(self) -> Optional[int]:
        return self._num_frames

    @property
    def reference(self) -> Optional[torch.Tensor]:
        return None if self.data is None else self.data.ref_rgb

    def frame_time(self, frame: int) -> float:
        return frame / float(self._num_frames or DEFAULT_PLAY_FRAMES)

    @torch.no_grad()
    def gaussians_at(self, time: Optional[float], scale: float = 1.0) -> GaussianParams:
        return self.model.gaussians_at(time, float(scale))

    @torch.no_grad()
    def render(self, camera: Camera, time: Optional[float], scale: float = 1.0) -> RenderOutput:
        gaussians = self.model.gaussians_at(time)
        if time is not None:
            camera = camera.with_time(float(time))
        background = torch.ones(3, device=self.device)
        return render(gaussians, camera.to(self.device), background, backend=self.backend,
                      scale_modifier=float(scale))

    def screenshot_dir(self) -> str:
        return self.folder

    def status(self) -> dict[str, str]:
        return {"gaussians": f"Gaussians: {int(self.model.num)}"}


__all__ = ["DEFAULT_PLAY_FRAMES", "SavedModelSession", "TrainingSession"]
