"""Interactive dearpygui viewer, kept apart from the training loop.

    python main.py --config configs/demo.yaml gui=True     # train and watch
    (visualize.py opens a saved model the same way, without training controls)

The viewer DRIVES a session through its public functions; the trainer never imports dearpygui.

* :class:`TrainingSession` wraps a ``trainer.Trainer`` (start/stop, ``train_step``, ``save``,
  step counter, losses, Gaussian count, time per step).
* :class:`SavedModelSession` wraps a ``gs_renderer.GaussianModel4D`` loaded from ``logs/`` (view
  only).
* :class:`ViewerApp` is the controller. Every widget callback is a plain method (``on_start_stop``,
  ``on_time_slider``, ``on_mode``, ``on_scale``, ``on_overlay``, ``on_play``, ``on_orbit``,
  ``on_pan``, ``on_zoom``, ``on_save_model``, ``on_save_png`` ...) that only changes the app's
  state, so tests call exactly what the widgets call. :meth:`ViewerApp.update` is one frame of
  logic (k train steps when running, time advance when playing, a render when something changed)
  and needs no display; :meth:`ViewerApp.build` / :meth:`ViewerApp.frame` / :meth:`ViewerApp.run`
  put it on screen.

Without a display the viewer stops with one line (:class:`NoDisplayError`) before dearpygui is
touched: a viewport that cannot be created aborts the process inside GLFW, so the check runs in a
subprocess. dearpygui is imported lazily (headless runs never need it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time as time_module
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

import cam_utils
from cam_utils import Camera, CameraConfig
from stag4d.errors import UserError
from stag4d.files import save_image
from stag4d.rasterizer import RenderOutput, render
from stag4d.settings import setting

RENDER_MODES = ("image", "depth", "alpha")
DEFAULT_SIZE = 512  # largest default view; ``viewer_size`` in the config (when present) overrides
PANEL_WIDTH = 330
DEFAULT_PLAY_FRAMES = 30  # time steps per clip when the number of frames is unknown
ORBIT_DEGREES_PER_PIXEL = 0.3
PAN_UNITS_PER_PIXEL = 0.002
PROBE_TIMEOUT_S = 30.0

HEADLESS_HINT = "run headless with gui=False (the default), or under a virtual display: xvfb-run -a python main.py ..."

# Run by :func:`probe_viewport` in a subprocess: GLFW aborts the whole process when it cannot open
# a window, so only a child may find out.
_PROBE_SCRIPT = """
import dearpygui.dearpygui as dpg
dpg.create_context()
dpg.create_viewport(title="probe", width=64, height=64)
dpg.setup_dearpygui()
dpg.show_viewport()
dpg.render_dearpygui_frame()
dpg.destroy_context()
print("viewport ok")
"""


@dataclass
class ViewerConfig:
    """The interactive viewer of ``main.py`` / ``visualize.py`` (``gui=True``)."""

    gui: bool = setting(False, "open the dearpygui viewer around the trainer (main.py) or the saved model")
    viewer_size: Optional[int] = setting(None, "view size in pixels; null = ref_size, at most 512", ge=1)
    viewer_steps_per_frame: int = setting(1, "training steps per displayed frame", ge=1)

    def size_for(self, ref_size: int) -> int:
        return self.viewer_size if self.viewer_size is not None else min(ref_size, DEFAULT_SIZE)


class NoDisplayError(UserError):
    """gui=True where no window can be opened (no display, or OpenGL/GLFW cannot start)."""


# ----------------------------------------------------------------------------------------------
# can a window be opened here?


def import_dearpygui() -> Any:
    """``dearpygui.dearpygui``; a one-line UserError naming the install command when it is missing."""
    try:
        import dearpygui.dearpygui as dpg
    except ImportError as err:
        raise UserError(f"gui=True needs dearpygui ({err}): pip install dearpygui; or {HEADLESS_HINT}") from err
    return dpg


def display_name(env: Optional[dict[str, str]] = None) -> Optional[str]:
    """The X11 or Wayland display named by the environment, or None."""
    env = os.environ if env is None else env
    return env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or None


def probe_viewport(env: Optional[dict[str, str]] = None, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Try to open a dearpygui viewport in a child process.

    Returns:
        (ok, reason): reason is the child's last output line (the GLFW error when it failed).
    """
    env = dict(os.environ if env is None else env)
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"opening a test window took over {timeout:.0f} s"
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    if done.returncode == 0 and "viewport ok" in lines:
        return True, "viewport ok"
    errors = [line for line in lines if "error" in line.lower() or "assert" in line.lower()]
    reason = (errors or lines or [f"exit status {done.returncode}"])[0]
    return False, reason


def require_gui(probe: bool = True) -> None:
    """Fail with one line unless dearpygui imports and a window can be opened here.

    Raises:
        UserError: dearpygui is missing.
        NoDisplayError: DISPLAY and WAYLAND_DISPLAY are unset, or (``probe``) no viewport opens.
    """
    import_dearpygui()
    name = display_name()
    if name is None:
        raise NoDisplayError(f"gui=True but no display was found (DISPLAY and WAYLAND_DISPLAY are unset); {HEADLESS_HINT}")
    if probe:
        ok, reason = probe_viewport()
        if not ok:
            raise NoDisplayError(f"gui=True but dearpygui cannot open a window on display {name} ({reason}); {HEADLESS_HINT}")


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
# sessions: what the viewer drives


class TrainingSession:
    """A ``trainer.Trainer`` seen by the viewer: train k steps at a time, render, save.

    Steps run only through the trainer's public ``train_step`` / ``save`` / ``render``. It saves on
    the config's ``save_step`` schedule, and stops (and saves) at ``total_steps``, like
    ``Trainer.train``; validation renders are left to headless runs.
    """

    can_train = True

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.total_steps = trainer.cfg.train.total_steps
        self.save_step = trainer.cfg.output.save_step
        self.running = False
        self.losses: dict[str, float] = {}
        self.num_gaussians = int(trainer.model.num)
        self.seconds_per_step = 0.0  # wall time of the last k steps / k, including the loss readback
        self.last_saved_step: Optional[int] = None

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

        Losses are read back once, after the last step (one host sync per call).
        """
        start = time_module.perf_counter()
        done = 0
        result: dict[str, Any] = {}
        save_step = self.save_step
        for _ in range(max(0, int(steps))):
            if self.finished:
                break
            result = self.trainer.train_step()
            done += 1
            if save_step and self.step % save_step == 0:
                self.save()
        if done:
            self.losses = {k: float(v) for k, v in result.items() if isinstance(v, torch.Tensor)}
            self.num_gaussians = int(result.get("num_gaussians", self.trainer.model.num))
            self.seconds_per_step = (time_module.perf_counter() - start) / done
        if self.finished:
            self.running = False
            if self.last_saved_step != self.step:
                self.save()
        return done

    def save(self) -> str:
        folder = self.trainer.save()
        self.last_saved_step = self.step
        return folder

    @property
    def unsaved(self) -> bool:
        """Steps were trained since the last save (or since the start, when the run never saved)."""
        return self.step > 0 and self.last_saved_step != self.step

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


# ----------------------------------------------------------------------------------------------
# the controller


class ViewerApp:
    """State and callbacks of the viewer; the dearpygui window is optional (:meth:`build`).

    Args:
        session: a :class:`TrainingSession` or :class:`SavedModelSession`.
        size: the view is ``size`` x ``size`` pixels.
        steps_per_frame: training steps per displayed frame while training runs (k).
        radius, fovy, elevation: the initial orbit (the reference view).
    """

    def __init__(self, session: Any, size: int = 256, steps_per_frame: int = 1, radius: float = cam_utils.DEFAULT_RADIUS,
                 fovy: float = cam_utils.DEFAULT_FOVY, elevation: float = 0.0):
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
        self.message = ""
        self.image = np.ones((self.size, self.size, 3), np.float32)  # what the view shows [H, W, 3]
        self.frames_rendered = 0
        self._dirty = True  # the view must be re-rendered
        self._dpg: Any = None
        self._texture: Optional[np.ndarray] = None  # [H, W, 4] float32, the dynamic texture's data
        self._drag_button: Optional[int] = None
        self._drag_last: Optional[tuple[float, float]] = None

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
    def nearest_frame(self) -> Optional[int]:
        """The frame nearest to the current time (None without a frame count)."""
        frames = self.num_frames
        if not frames:
            return None
        return int(min(frames - 1, max(0, round(self.time * frames))))

    # ---- widget callbacks (plain methods: the widgets and the tests call these) ----------------
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
        """Play / pause: while playing, time advances one frame per displayed frame."""
        self.playing = not self.playing

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
        if path is None:
            name = f"view_step{self.session.step}_t{self.time:.4f}_{self.mode}.png"
            path = os.path.join(self.session.screenshot_dir(), name)
        self.render_now()
        save_image(path, (self.image * 255.0).round().astype(np.uint8))
        self.message = f"saved {path}"
        return path

    # ---- one frame of logic ------------------------------------------------------------------
    def current_camera(self) -> Camera:
        return self.camera.camera(self.time, device=self.session.device)

    def render_now(self) -> np.ndarray:
        """Render the current view into :attr:`image` [H, W, 3] (float32 in [0, 1])."""
        out = self.session.render(self.current_camera(), self.time, self.scale)
        view = display_image(out, self.mode)
        reference = self.session.reference
        if self.overlay > 0 and reference is not None and self.nearest_frame is not None:
            view = blend_reference(view, reference[self.nearest_frame], self.overlay)
        self.image = view
        self.frames_rendered += 1
        self._dirty = False
        return view

    def advance_time(self) -> None:
        """One frame forward (wrapping to the first frame after the last)."""
        frames = self.num_frames
        if frames:
            self.time = self.session.frame_time(((self.nearest_frame or 0) + 1) % frames)
        else:
            step = 1.0 / DEFAULT_PLAY_FRAMES
            self.time = 0.0 if self.time + step > self.time_max + 1e-9 else self.time + step
        self._dirty = True

    def update(self) -> bool:
        """One displayed frame of logic: k train steps when running, time advance when playing,
        then a render when anything changed. Returns whether :attr:`image` changed."""
        if self.session.can_train and self.session.running:
            self.session.train(self.steps_per_frame)
            self._dirty = True
            if not self.session.running and self.session.finished:
                self.message = f"training finished at step {self.session.step}"
        if self.playing:
            self.advance_time()
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

    # ---- the window (dearpygui) -----------------------------------------------------------------
    def build(self, title: str = "STAG4D viewer") -> None:
        """Create the dearpygui context, texture, widgets, mouse handlers and viewport."""
        dpg = import_dearpygui()
        self._dpg = dpg
        dpg.create_context()
        # Callbacks run in this thread, between frames (see :meth:`frame`): by default dearpygui
        # calls them from its own thread, which would race with training steps on the model.
        dpg.configure_app(manual_callback_management=True)
        self._texture = np.ones((self.size, self.size, 4), np.float32)
        with dpg.texture_registry():
            dpg.add_raw_texture(self.size, self.size, self._texture, format=dpg.mvFormat_Float_rgba, tag="view_texture")

        def widget(method: Callable[..., Any], with_value: bool = True) -> Callable[..., None]:
            # dearpygui passes (sender, app_data); the controller methods take the value only.
            if with_value:
                return lambda sender, app_data: method(app_data)
            return lambda sender, app_data: method()

        with dpg.window(tag="main_window"):
            with dpg.group(horizontal=True):
                dpg.add_image("view_texture", tag="view_image")
                with dpg.child_window(width=PANEL_WIDTH, tag="panel"):
                    if self.session.can_train:
                        dpg.add_text("Training")
                        dpg.add_button(label="Start training", tag="start_stop",
                                       callback=widget(self.on_start_stop, False))
                        dpg.add_input_int(label="steps per frame", default_value=self.steps_per_frame, min_value=1,
                                          min_clamped=True, width=100, tag="steps_per_frame",
                                          callback=widget(self.on_steps_per_frame))
                        for tag in ("step", "gaussians", "speed", "losses"):
                            dpg.add_text("", tag=f"status_{tag}")
                    else:
                        dpg.add_text("Saved model (view only)")
                        dpg.add_text("", tag="status_gaussians")
                    dpg.add_separator()
                    dpg.add_text("View")
                    dpg.add_slider_float(label="time", min_value=0.0, max_value=self.time_max, default_value=self.time,
                                         format="%.3f", width=160, tag="time_slider", callback=widget(self.on_time_slider))
                    dpg.add_text("", tag="status_frame")
                    dpg.add_button(label="Play", tag="play", callback=widget(self.on_play, False))
                    dpg.add_radio_button(list(RENDER_MODES), default_value=self.mode, horizontal=True, tag="mode",
                                         callback=widget(self.on_mode))
                    dpg.add_slider_float(label="Gaussian scale", min_value=0.05, max_value=2.0, default_value=self.scale,
                                         width=160, tag="scale", callback=widget(self.on_scale))
                    if self.session.reference is not None:
                        dpg.add_slider_float(label="reference overlay", min_value=0.0, max_value=1.0,
                                             default_value=self.overlay, width=160, tag="overlay",
                                             callback=widget(self.on_overlay))
                    else:
                        dpg.add_text("(no reference frames to overlay)")
                    dpg.add_button(label="Reset view", tag="reset_view", callback=widget(self.on_reset_view, False))
                    dpg.add_text("left drag: orbit, middle/right drag: pan, wheel: zoom", wrap=PANEL_WIDTH - 20)
                    dpg.add_separator()
                    if self.session.can_train:
                        dpg.add_button(label="Save model", tag="save_model", callback=widget(self.on_save_model, False))
                    dpg.add_button(label="Save view as PNG", tag="save_png", callback=widget(self.on_save_png, False))
                    dpg.add_text("", tag="status_message", wrap=PANEL_WIDTH - 20)

        with dpg.handler_registry():
            dpg.add_mouse_click_handler(callback=self._on_mouse_click)
            dpg.add_mouse_release_handler(callback=self._on_mouse_release)
            dpg.add_mouse_move_handler(callback=self._on_mouse_move)
            dpg.add_mouse_wheel_handler(callback=self._on_mouse_wheel)

        dpg.create_viewport(title=title, width=self.size + PANEL_WIDTH + 40, height=max(self.size + 40, 600))
        dpg.setup_dearpygui()
        dpg.show_viewport()
        dpg.set_primary_window("main_window", True)

    def _on_mouse_click(self, sender: Any, button: int) -> None:
        # A drag starts only on the view, so dragging a slider never moves the camera.
        if self._dpg.is_item_hovered("view_image"):
            self._drag_button = int(button)
            self._drag_last = tuple(self._dpg.get_mouse_pos(local=False))

    def _on_mouse_release(self, sender: Any, button: int) -> None:
        self._drag_button, self._drag_last = None, None

    def _on_mouse_move(self, sender: Any, position: Any) -> None:
        if self._drag_button is None or self._drag_last is None:
            return
        x, y = self._dpg.get_mouse_pos(local=False)
        dx, dy = x - self._drag_last[0], y - self._drag_last[1]
        self._drag_last = (x, y)
        if self._drag_button == self._dpg.mvMouseButton_Left:
            self.on_orbit(dx, dy)
        else:
            self.on_pan(dx, dy)

    def _on_mouse_wheel(self, sender: Any, delta: float) -> None:
        if self._dpg.is_item_hovered("view_image"):
            self.on_zoom(float(delta))

    def _sync_widgets(self) -> None:
        """Push the state to the widgets (status texts; the time slider follows playback)."""
        dpg = self._dpg
        for key, text in self.status().items():
            tag = f"status_{key}"
            if dpg.does_item_exist(tag):
                dpg.set_value(tag, text)
        # widgets follow state changed by other routes (playback, tests, scripts)
        dpg.set_value("time_slider", self.time)
        dpg.set_value("mode", self.mode)
        dpg.set_value("scale", self.scale)
        if dpg.does_item_exist("overlay"):
            dpg.set_value("overlay", self.overlay)
        dpg.configure_item("play", label="Pause" if self.playing else "Play")
        if self.session.can_train:
            dpg.configure_item("start_stop", label="Stop training" if self.session.running else "Start training")
            dpg.set_value("steps_per_frame", self.steps_per_frame)

    def frame(self) -> None:
        """One displayed frame: :meth:`update`, new texture data when the view changed, draw."""
        dpg = self._dpg
        busy = (self.session.can_train and self.session.running) or self.playing
        if self.update():
            self._texture[..., :3] = self.image
            dpg.set_value("view_texture", self._texture)
        self._sync_widgets()
        dpg.render_dearpygui_frame()
        dpg.run_callbacks(dpg.get_callback_queue())
        if not busy and not self._dirty:
            time_module.sleep(1.0 / 120.0)  # idle: do not spin a core where vsync is missing (Xvfb)

    def is_open(self) -> bool:
        return self._dpg is not None and bool(self._dpg.is_dearpygui_running())

    def run(self) -> None:
        """Show frames until the window closes, then close it."""
        if self._dpg is None:
            self.build()
        try:
            while self.is_open():
                self.frame()
        finally:
            self.close()

    def close(self) -> None:
        if self._dpg is not None:
            self._dpg.destroy_context()
            self._dpg = None

    def view_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the view in the window's framebuffer, in pixels."""
        left, top = self._dpg.get_item_rect_min("view_image")
        return int(left), int(top), int(left) + self.size, int(top) + self.size

    def screenshot(self, settle_frames: int = 3, max_frames: int = 20) -> np.ndarray:
        """The whole window as shown: uint8 [H, W, 3] from dearpygui's framebuffer.

        The framebuffer dearpygui returns lags the latest state by two frames (swap chain), so
        ``settle_frames`` frames are drawn first; while training or playing, the shot shows the
        view of a couple of frames earlier.
        """
        dpg = self._dpg
        for _ in range(settle_frames):
            self.frame()
        captured: list[Any] = []
        dpg.output_frame_buffer(callback=lambda sender, buffer: captured.append(buffer))
        for _ in range(max_frames):
            self.frame()
            if captured:
                break
        if not captured:
            raise RuntimeError(f"dearpygui returned no framebuffer within {max_frames} frames")
        buffer = captured[0]
        height, width = int(buffer.get_height()), int(buffer.get_width())
        pixels = np.asarray(buffer, dtype=np.float32).reshape(height, width, 4)[..., :3]
        return (pixels.clip(0, 1) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# entry points


def make_app(session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int) -> ViewerApp:
    """A :class:`ViewerApp` on ``session`` with the run's cameras; size = ``viewer_size`` or ``ref_size``
    (at most 512)."""
    return ViewerApp(session, size=settings.size_for(ref_size), steps_per_frame=settings.viewer_steps_per_frame,
                     radius=camera.radius, fovy=camera.fovy, elevation=camera.elevation)


def run_viewer(session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int) -> ViewerApp:
    """Open the viewer on a :class:`TrainingSession` (training controls) or a
    :class:`SavedModelSession` (view only) and run it until the window closes.

    Returns:
        the closed app. A training run with steps not yet saved is saved when the window closes.

    Raises:
        UserError: dearpygui missing; NoDisplayError: no display / no window can be opened.
    """
    require_gui()
    app = make_app(session, settings, camera, ref_size)
    try:
        app.run()
    finally:
        if session.can_train and session.unsaved:
            print(f"saved {session.save()}")
    return app


__all__ = [
    "NoDisplayError",
    "RENDER_MODES",
    "SavedModelSession",
    "TrainingSession",
    "ViewerApp",
    "blend_reference",
    "display_image",
    "display_name",
    "import_dearpygui",
    "ViewerConfig",
    "make_app",
    "probe_viewport",
    "require_gui",
    "run_viewer",
]
