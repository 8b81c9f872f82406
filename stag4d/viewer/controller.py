"""What a viewer can do, once for both front ends (the dearpygui window and the web page).

:class:`ViewerController` holds the viewer's state (time, playback, render mode, Gaussian scale,
reference overlay, the orbit camera, the message line) and its actions as plain methods
(``on_start_stop``, ``on_time_slider``, ``on_play``, ``on_mode``, ``on_scale``, ``on_overlay``,
``on_orbit``, ``on_pan``, ``on_zoom``, ``on_reset_view``, ``on_save_model``, ``on_save_png`` ...).
A front end only turns its widgets' events into these calls and shows the state; tests call
exactly what the widgets call. :meth:`ViewerController.advance` is one turn of logic (k training
steps while training runs, the time forward while playing) and needs no display.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch

import cam_utils
from cam_utils import Camera
from stag4d.data.video import quantize
from stag4d.errors import UserError
from stag4d.files import save_image
from stag4d.rasterizer import RenderOutput
from stag4d.viewer.sessions import DEFAULT_PLAY_FRAMES

RENDER_MODES = ("image", "depth", "alpha")
ORBIT_DEGREES_PER_PIXEL = 0.3
PAN_UNITS_PER_PIXEL = 0.002


# ----------------------------------------------------------------------------------------------
# what the view shows


def display_image(out: RenderOutput, mode: str) -> np.ndarray:
    """A render as an RGB float32 image [H, W, 3] in [0, 1] for the screen.

    ``image``: the colour; ``alpha``: accumulated opacity in grey; ``depth``: expected depth
    (depth / alpha), near = bright, normalized over the covered pixels, black where nothing is.
    """
    if mode == "image":
        view = out.image
    elif mode == "alpha":
        view = out.alpha.expand(3, -1, -1)
    elif mode == "depth":
        alpha = out.alpha[0]
        covered = alpha > 0.05
        depth = out.depth[0] / alpha.clamp_min(1e-6)
        if bool(covered.any()):
            near, far = depth[covered].min(), depth[covered].max()
            shade = 1.0 - (depth - near) / (far - near).clamp_min(1e-6)
            shade = torch.where(covered, 0.15 + 0.85 * shade, torch.zeros_like(shade)) * alpha.clamp(0, 1)
        else:
            shade = torch.zeros_like(depth)
        view = shade.expand(3, -1, -1)
    else:
        raise UserError(f"render mode {mode!r} is not one of {', '.join(RENDER_MODES)}")
    return view.detach().clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()


def blend_reference(view: np.ndarray, reference: torch.Tensor, amount: float) -> np.ndarray:
    """(1 - amount) * view + amount * reference, the reference [3, S, S] resized to the view [H, W, 3]."""
    height, width = view.shape[:2]
    ref = reference.detach().float().unsqueeze(0)
    if ref.shape[-2:] != (height, width):
        ref = torch.nn.functional.interpolate(ref, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=True)
    ref_np = ref[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return ((1.0 - amount) * view + amount * ref_np).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# the controller


class ViewerController:
    """State and actions of a viewer on a session.

    Args:
        session: a :class:`~stag4d.viewer.sessions.TrainingSession` or
            :class:`~stag4d.viewer.sessions.SavedModelSession`.
        size: the controller's own view is ``size`` x ``size`` pixels.
        steps_per_frame: training steps per turn of :meth:`advance` while training runs (k).
        radius, fovy, elevation: the initial orbit (the reference view).
        play_fps: playback speed in frames per second of the clock passed to :meth:`advance`;
            None = one frame per turn (the window shows one frame per displayed frame).
    """

    def __init__(self, session: Any, size: int = 256, steps_per_frame: int = 1, radius: float = cam_utils.DEFAULT_RADIUS,
                 fovy: float = cam_utils.DEFAULT_FOVY, elevation: float = 0.0, play_fps: Optional[float] = None):
        self.session = session
        self.size = int(size)
        self.steps_per_frame = max(1, int(steps_per_frame))
        self.home = dict(radius=float(radius), fovy=float(fovy), elevation=float(elevation))
        self.camera = cam_utils.OrbitCamera(self.size, self.size, **self.home)
        self.time = 0.0
        self.mode = "image"
        self.scale = 1.0
        self.overlay = 0.0
        self.playing = False
        self.play_fps = None if play_fps is None else float(play_fps)
        self.message = ""
        self.image = np.ones((self.size, self.size, 3), np.float32)  # what the view shows [H, W, 3]
        self.frames_rendered = 0
        self._dirty = True  # the view must be re-rendered
        self._play_clock: Optional[tuple[float, int]] = None  # (clock when playback started, frames shown since)

    # ---- time -----------------------------------------------------------------------------
    @property
    def num_frames(self) -> Optional[int]:
        return self.session.num_frames

    @property
    def time_max(self) -> float:
        """Largest slider time: the last frame's t = (T - 1) / T (1 when T is unknown)."""
        frames = self.num_frames
        return (frames - 1) / frames if frames else 1.0

    @property
    def time_step(self) -> float:
        """One frame of time: 1 / T (1 / 30 when T is unknown)."""
        return 1.0 / float(self.num_frames or DEFAULT_PLAY_FRAMES)

    @property
    def nearest_frame(self) -> Optional[int]:
        """The frame nearest to the current time (None without a frame count)."""
        frames = self.num_frames
        if not frames:
            return None
        return int(min(frames - 1, max(0, round(self.time * frames))))

    # ---- actions (plain methods: the widgets and the tests call these) -------------------------
    def on_start_stop(self) -> None:
        """Start or stop training (training sessions only)."""
        if not self.session.can_train:
            return
        if self.session.running:
            self.session.stop()
        else:
            self.session.start()
            if not self.session.running:
                self.message = f"training finished at step {self.session.step}"

    def on_steps_per_frame(self, steps: int) -> None:
        self.steps_per_frame = max(1, int(steps))

    def on_time_slider(self, time: float) -> None:
        self.time = float(min(max(float(time), 0.0), self.time_max))
        self._dirty = True

    def on_play(self) -> None:
        """Play / pause: while playing, time advances one frame per turn (or at ``play_fps``)."""
        self.playing = not self.playing
        self._play_clock = None

    def on_mode(self, mode: str) -> None:
        if mode not in RENDER_MODES:
            raise UserError(f"render mode {mode!r} is not one of {', '.join(RENDER_MODES)}")
        self.mode = mode
        self._dirty = True

    def on_scale(self, scale: float) -> None:
        """Gaussian scale modifier (multiplies every scale at render time)."""
        self.scale = max(1e-3, float(scale))
        self._dirty = True

    def on_overlay(self, amount: float) -> None:
        """Blend of the reference frame nearest to the current time (0 = off, 1 = only the frame)."""
        self.overlay = float(min(max(float(amount), 0.0), 1.0))
        self._dirty = True

    def on_orbit(self, dx: float, dy: float) -> None:
        self.camera.orbit(dx, dy, degrees_per_pixel=ORBIT_DEGREES_PER_PIXEL)
        self._dirty = True

    def on_pan(self, dx: float, dy: float) -> None:
        self.camera.pan(dx, dy, units_per_pixel=PAN_UNITS_PER_PIXEL)
        self._dirty = True

    def on_zoom(self, delta: float) -> None:
        self.camera.scale(delta)
        self._dirty = True

    def on_reset_view(self) -> None:
        """Back to the reference camera (where the overlay lines up)."""
        self.camera = cam_utils.OrbitCamera(self.size, self.size, **self.home)
        self._dirty = True

    def on_save_model(self) -> Optional[str]:
        """Save a checkpoint (training sessions): ``<outdir>/<save_path>/<step>/``."""
        if not self.session.can_train:
            return None
        folder = self.session.save()
        self.message = f"saved {folder}"
        return folder

    def on_save_png(self, path: Optional[str] = None) -> str:
        """Save the current view (with its mode and overlay) as a PNG; returns its path."""
        self.render_now()
        return self.save_view(self.image, path)

    def save_view(self, image: np.ndarray, path: Optional[str] = None) -> str:
        """Write a rendered view [H, W, 3] as a PNG (default: a name with the step, time and mode in
        the session's screenshot folder); returns its path."""
        if path is None:
            name = f"view_step{self.session.step}_t{self.time:.4f}_{self.mode}.png"
            path = os.path.join(self.session.screenshot_dir(), name)
        save_image(path, quantize(image))
        self.message = f"saved {path}"
        return path

    # ---- rendering ---------------------------------------------------------------------------
    def current_camera(self) -> Camera:
        return self.camera.camera(self.time, device=self.session.device)

    def render_view(self, camera: Camera) -> np.ndarray:
        """``camera``'s view at the current time through our rasterizer, with the current mode,
        Gaussian scale and overlay: float32 [H, W, 3] in [0, 1]."""
        out = self.session.render(camera.with_time(self.time).to(self.session.device), self.time, self.scale)
        view = display_image(out, self.mode)
        reference = self.session.reference
        if self.overlay > 0 and reference is not None and self.nearest_frame is not None:
            view = blend_reference(view, reference[self.nearest_frame], self.overlay)
        return view

    def render_now(self) -> np.ndarray:
        """Render the controller's own view into :attr:`image` [H, W, 3] (float32 in [0, 1])."""
        self.image = self.render_view(self.current_camera())
        self.frames_rendered += 1
        self._dirty = False
        return self.image

    # ---- one turn of logic -------------------------------------------------------------------
    def advance_time(self, frames: int = 1) -> None:
        """``frames`` frames forward (wrapping to the first frame after the last)."""
        count = self.num_frames
        if count:
            self.time = self.session.frame_time(((self.nearest_frame or 0) + frames) % count)
        else:
            for _ in range(frames):
                step = 1.0 / DEFAULT_PLAY_FRAMES
                self.time = 0.0 if self.time + step > self.time_max + 1e-9 else self.time + step
        self._dirty = True

    def frames_due(self, now: Optional[float]) -> int:
        """Frames to advance while playing: 1 per turn without ``play_fps``; at ``play_fps``, the
        frames whose time on the clock ``now`` (seconds) has come since playback started (frames
        are skipped when turns are slower than the video, so it keeps the video's speed)."""
        if self.play_fps is None or now is None:
            return 1
        if self._play_clock is None:
            self._play_clock = (float(now), 0)
            return 0
        start, shown = self._play_clock
        due = int((float(now) - start) * self.play_fps + 1e-6) - shown  # (1e-6: 100.1 - 100 is 0.0999...)
        if due <= 0:
            return 0
        self._play_clock = (start, shown + due)
        return due

    def advance(self, now: Optional[float] = None) -> tuple[int, bool]:
        """One turn: k training steps while training runs, the time forward while playing.

        Args:
            now: the clock in seconds (``time.monotonic()``), for playback at ``play_fps``.
        Returns:
            (training steps run, whether the time moved).
        """
        trained = 0
        if self.session.can_train and self.session.running:
            trained = self.session.train(self.steps_per_frame)
            self._dirty = True
            if not self.session.running and self.session.finished:
                self.message = f"training finished at step {self.session.step}"
        moved = False
        if self.playing:
            frames = self.frames_due(now)
            if frames:
                self.advance_time(frames)
                moved = True
        return trained, moved

    def update(self, now: Optional[float] = None) -> bool:
        """:meth:`advance`, then a render of the own view when anything changed. Returns whether
        :attr:`image` changed."""
        self.advance(now)
        if self._dirty:
            self.render_now()
            return True
        return False

    def status(self) -> dict[str, str]:
        """Texts of the status widgets."""
        texts = dict(self.session.status())
        frame = self.nearest_frame
        texts["frame"] = f"t = {self.time:.3f}" + (f"  frame {frame} / {self.num_frames}" if frame is not None else "")
        texts["message"] = self.message
        return texts


__all__ = ["ORBIT_DEGREES_PER_PIXEL", "PAN_UNITS_PER_PIXEL", "RENDER_MODES", "ViewerController", "blend_reference",
           "display_image"]
