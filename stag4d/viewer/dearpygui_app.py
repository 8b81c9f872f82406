"""The dearpygui front end: a desktop window around a :class:`~stag4d.viewer.controller.ViewerController`.

    python main.py --config configs/demo.yaml gui=dearpygui     # (or gui=True) train and watch
    (visualize.py opens a saved model the same way, without training controls)

:class:`ViewerApp` is the controller plus its window: every widget callback calls one of the
controller's actions; :meth:`ViewerApp.build` / :meth:`ViewerApp.frame` / :meth:`ViewerApp.run`
put it on screen, one :meth:`~ViewerController.update` per displayed frame.

Without a display the viewer stops with one line (:class:`NoDisplayError`) before dearpygui is
touched: a viewport that cannot be created aborts the process inside GLFW, so the check runs in a
subprocess. dearpygui is imported lazily (headless runs never need it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time as time_module
from typing import Any, Callable, Optional

import numpy as np

from cam_utils import CameraConfig
from stag4d.errors import UserError
from stag4d.viewer.config import ViewerConfig
from stag4d.viewer.controller import RENDER_MODES, ViewerController

PANEL_WIDTH = 330
PROBE_TIMEOUT_S = 30.0

HEADLESS_HINT = ("run headless with gui=False (the default), in a browser with gui=web, or under a virtual display: "
                 "xvfb-run -a python main.py ...")

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


class NoDisplayError(UserError):
    """gui=dearpygui (or True) where no window can be opened (no display, or OpenGL/GLFW cannot start)."""


# ----------------------------------------------------------------------------------------------
# can a window be opened here?


def import_dearpygui() -> Any:
    """``dearpygui.dearpygui``; a one-line UserError naming the install command when it is missing."""
    try:
        import dearpygui.dearpygui as dpg
    except ImportError as err:
        raise UserError(f"gui=dearpygui needs dearpygui ({err}): pip install dearpygui; or {HEADLESS_HINT}") from err
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
        raise NoDisplayError(f"gui=dearpygui but no display was found (DISPLAY and WAYLAND_DISPLAY are unset); {HEADLESS_HINT}")
    if probe:
        ok, reason = probe_viewport()
        if not ok:
            raise NoDisplayError(f"gui=dearpygui but dearpygui cannot open a window on display {name} ({reason}); {HEADLESS_HINT}")


# ----------------------------------------------------------------------------------------------
# the window


class ViewerApp(ViewerController):
    """The controller in a dearpygui window (:meth:`build`); without :meth:`build` it is the bare
    controller (the tests drive it that way)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._dpg: Any = None
        self._texture: Optional[np.ndarray] = None  # [H, W, 4] float32, the dynamic texture's data
        self._drag_button: Optional[int] = None
        self._drag_last: Optional[tuple[float, float]] = None

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


def run_window(session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int) -> ViewerApp:
    """Open the window on a training session (training controls) or a saved-model session (view
    only) and run it until the window closes.

    Returns:
        the closed app. A training run with steps not yet saved is saved when the window closes.

    Raises:
        UserError: dearpygui missing; NoDisplayError: no display / no window can be opened.
    """
    require_gui()
    app = make_app(session, settings, camera, ref_size)
    if settings.viewer_autostart:
        app.on_start_stop()
    try:
        app.run()
    finally:
        if session.can_train and (folder := session.save_on_close()) is not None:
            print(f"saved {folder}")
    return app


__all__ = ["HEADLESS_HINT", "NoDisplayError", "ViewerApp", "display_name", "import_dearpygui", "make_app",
           "probe_viewport", "require_gui", "run_window"]
