"""The interactive viewers: one controller, two front ends.

    python main.py --config configs/demo.yaml gui=web           # train; watch in a browser (viser)
    python main.py --config configs/demo.yaml gui=dearpygui     # train; watch in a desktop window (or gui=True)
    python visualize.py --config configs/demo.yaml gui=web      # play a saved run

* :mod:`~stag4d.viewer.config`: :class:`ViewerConfig`, the ``viewer`` section of the run config.
* :mod:`~stag4d.viewer.sessions`: what a viewer drives, :class:`TrainingSession` (a ``Trainer``,
  through its public methods only) or :class:`SavedModelSession` (a loaded model).
* :mod:`~stag4d.viewer.controller`: :class:`ViewerController`, what a viewer can do (its state and
  actions), whichever front end shows it.
* :mod:`~stag4d.viewer.dearpygui_app`: the desktop window (:class:`ViewerApp`); needs a display.
* :mod:`~stag4d.viewer.web`: the browser page (:class:`WebViewer`), a viser server reached through
  an SSH port forward; :mod:`~stag4d.viewer.splats` turns Gaussians into what the browser draws.

The trainer never imports a viewer. dearpygui and viser are imported lazily, by the front end
that needs them.
"""
from __future__ import annotations

from typing import Any

from cam_utils import CameraConfig
from stag4d.viewer.config import FRONT_ENDS, ViewerConfig, normalize_gui
from stag4d.viewer.controller import RENDER_MODES, ViewerController, blend_reference, display_image
from stag4d.viewer.dearpygui_app import (
    NoDisplayError,
    ViewerApp,
    display_name,
    import_dearpygui,
    make_app,
    probe_viewport,
    require_gui,
    run_window,
)
from stag4d.viewer.sessions import DEFAULT_PLAY_FRAMES, SavedModelSession, TrainingSession


def require_front_end(settings: ViewerConfig) -> None:
    """Fail with one line, before any data or model is loaded, when the front end ``settings.gui``
    names cannot run here (dearpygui: the package and a display; web: the viser package)."""
    if settings.gui == "dearpygui":
        require_gui()
    elif settings.gui == "web":
        from stag4d.viewer.web import import_viser

        import_viser()


def run_viewer(session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int, fps: float) -> Any:
    """Run the front end ``settings.gui`` names on a training or saved-model session until it is
    closed (window closed / Ctrl-C); returns the closed app. Unsaved training steps are saved.

    Args:
        fps: playback speed of the web viewer, frames per second (the run's ``video_fps``).
    Raises:
        UserError: the front end is missing its package or display, or ``gui`` is off.
    """
    if settings.gui == "web":
        from stag4d.viewer.web import run_web

        return run_web(session, settings, camera, ref_size, fps)
    if settings.gui == "dearpygui":
        return run_window(session, settings, camera, ref_size)
    raise ValueError(f"gui={settings.gui}: no viewer to run (use gui=web or gui=dearpygui)")


__all__ = [
    "DEFAULT_PLAY_FRAMES",
    "FRONT_ENDS",
    "NoDisplayError",
    "RENDER_MODES",
    "SavedModelSession",
    "TrainingSession",
    "ViewerApp",
    "ViewerConfig",
    "ViewerController",
    "blend_reference",
    "display_image",
    "display_name",
    "import_dearpygui",
    "make_app",
    "normalize_gui",
    "probe_viewport",
    "require_front_end",
    "require_gui",
    "run_viewer",
    "run_window",
]
