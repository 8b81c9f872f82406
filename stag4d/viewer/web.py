"""The web front end: a viser server that shows the viewer in a browser (``gui=web``).

    python main.py --config configs/demo.yaml gui=web            # train and watch in a browser
    python visualize.py --config configs/demo.yaml gui=web       # play a saved run
    # on your computer: ssh -N -L 8080:127.0.0.1:8080 USER@SERVER, then open http://localhost:8080

:class:`WebViewer` is the :class:`~stag4d.viewer.controller.ViewerController` behind a page: the
4D Gaussians as viser splats at the current time (each browser orbits its own camera), a time
slider and play/pause at the video's fps, the reference frame of the current time beside the
view, training controls and status, and a button that renders the browser's current view at full
quality through our rasterizer and downloads it as a PNG.

Threads: viser calls the widgets' callbacks on its own threads; they only queue actions. The
thread that calls :meth:`WebViewer.run` (or :meth:`WebViewer.tick`) runs the queued actions,
the training steps and the scene updates, so the model is only ever touched there. Browsers may
come and go at any time: training never waits for one, and without any the scene is not even
computed. viser is imported lazily (only ``gui=web`` needs it).
"""
from __future__ import annotations

import collections
import getpass
import io
import math
import os
import queue
import socket
import sys
import threading
import time as time_module
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

import cam_utils
from cam_utils import Camera, CameraConfig
from stag4d.data.video import quantize, to_uint8
from stag4d.errors import UserError
from stag4d.rasterizer.torch_backend import quat_to_rotmat
from stag4d.viewer.config import DEFAULT_SIZE, ViewerConfig
from stag4d.viewer.controller import RENDER_MODES, ViewerController
from stag4d.viewer.splats import Splats, splats_of

IDLE_WAIT_S = 1.0 / 60.0  # longest wait for a browser's action between turns while not training
REFERENCE_PANEL_SIZE = 192  # the reference frame beside the view, pixels (viser shows images 1:1)
SPLATS_NODE = "/model"
CACHED_SCENES = 64
MIN_UPDATE_INTERVAL_S = 0.2  # saved models: scenes (times) kept, so that playback repeats without deforming again


def import_viser() -> Any:
    """The ``viser`` module; a one-line UserError naming the install command when it is missing."""
    try:
        import viser
    except ImportError as err:
        raise UserError(f"gui=web needs viser ({err}): pip install viser; or run headless with gui=False") from err
    return viser


def camera_from_browser(position: Any, wxyz: Any, fov: float, aspect: float, height: int,
                        time: float = 0.0) -> Camera:
    """Our :class:`~cam_utils.Camera` for a browser's camera.

    Args:
        position: camera centre in the world [3].
        wxyz: camera-to-world rotation as a quaternion, OpenCV axes (viser's convention, as ours).
        fov: vertical field of view in radians.
        aspect: width / height of the browser's view.
        height: image height of the render; the width follows the aspect.
    """
    rotation = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, dtype=np.float64)).reshape(1, 4))[0].numpy()
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = rotation
    camera_to_world[:3, 3] = np.asarray(position, dtype=np.float64)
    world_to_camera = np.linalg.inv(camera_to_world)
    width = max(1, int(round(height * float(aspect))))
    return Camera(torch.tensor(world_to_camera, dtype=torch.float32), math.degrees(float(fov)), width, int(height), time)


def png_bytes(image: np.ndarray) -> bytes:
    """A float image [H, W, 3] in [0, 1] as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(quantize(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def forward_hint(host: str, port: int) -> tuple[str, str]:
    """(URL to open on this machine, the SSH command that forwards it to a laptop)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::", "", "localhost") else host
    url = f"http://{target}:{port}"
    ssh = f"ssh -N -L {port}:{target}:{port} {getpass.getuser()}@{socket.gethostname()}"
    return url, ssh


def status_markdown(texts: dict[str, str]) -> str:
    """The controller's status texts as markdown lines (losses as a list)."""
    lines = []
    for key in ("step", "gaussians", "speed", "frame", "message"):
        text = texts.get(key, "").strip()
        if text:
            lines.append(text)
    if "losses" in texts:
        head, *rows = texts["losses"].splitlines()
        lines.append(head)
        lines.extend(f"- {row.strip()}" for row in rows)
    return "  \n".join(lines)


class WebViewer(ViewerController):
    """The viewer served to browsers by viser.

    Args:
        session: a training or saved-model session.
        settings: the ``viewer`` section (host, port, update interval, sizes).
        camera: the run's cameras (the home view is the reference camera).
        ref_size: the run's reference size.
        fps: playback speed (the run's ``video_fps``).
    """

    def __init__(self, session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int, fps: float):
        super().__init__(session, size=settings.size_for(ref_size), steps_per_frame=settings.viewer_steps_per_frame,
                         radius=camera.radius, fovy=camera.fovy, elevation=camera.elevation, play_fps=fps)
        self.settings = settings
        self.render_height = int(settings.viewer_size or DEFAULT_SIZE)  # full-quality renders, pixels
        self.update_steps = int(settings.viewer_update_steps)
        self.server: Any = None
        self.widgets: dict[str, Any] = {}
        self._actions: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self._splats_handle: Any = None
        self._scene_stale = True  # the browsers' scene is older than the state (or there are none yet)
        self._steps_since_publish = 0
        self._shown: Optional[tuple[float, float]] = None  # (time, scale) of the scene last sent
        self._shown_props: dict[tuple[str, str], Any] = {}  # (widget, property) -> the value last shown
        # While training, the scene and the status go out at most this often (seconds), however
        # fast the steps are: every update makes each browser re-sort and redraw the splats.
        self.min_update_interval = MIN_UPDATE_INTERVAL_S
        self._last_training_update = -math.inf
        self._last_status = -math.inf
        self._reference_images = self._reference_panel_images()
        self._scene_cache: collections.OrderedDict[tuple[float, float], Splats] = collections.OrderedDict()
        self.splats: Optional[Splats] = None  # the scene last sent to the browsers
        self.published: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)  # what was sent, when
        self.url = ""
        self.ssh_command = ""
        self._stop = threading.Event()

    # ---- the server --------------------------------------------------------------------------
    def start(self, announce: bool = True) -> None:
        """Start the viser server and build the page; print the URL and the SSH forward line."""
        viser = import_viser()
        settings = self.settings
        self.server = server = viser.ViserServer(host=settings.viewer_host, port=settings.viewer_port,
                                                 label="STAG4D", verbose=False)
        server.scene.set_up_direction("+y")  # our world: +y up (cam_utils)
        home = server.initial_camera
        home.position = tuple(cam_utils.orbit_position(self.home["elevation"], 0.0, self.home["radius"]))
        home.look_at = (0.0, 0.0, 0.0)
        home.up = (0.0, 1.0, 0.0)
        home.fov = math.radians(self.home["fovy"])
        self._build_gui()
        # no connect/disconnect hooks: viser replays its scene to a browser that joins (persistent
        # broadcast buffer), and one that leaves needs nothing undone
        self.url, self.ssh_command = forward_hint(settings.viewer_host, self.port)
        if announce:
            print(f"web viewer: {self.url}", flush=True)
            print(f"from another computer: {self.ssh_command}   then open http://localhost:{self.port}", flush=True)

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def num_clients(self) -> int:
        return 0 if self.server is None else len(self.server.get_clients())

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def queue(self, action: Callable[[], Any]) -> None:
        """Run ``action`` on the viewer's thread at its next turn (viser's callbacks come here)."""
        self._actions.put(action)

    def stop(self) -> None:
        """Make :meth:`run` return (from any thread)."""
        self._stop.set()
        self.queue(lambda: None)  # wake it

    # ---- the page ----------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.server.gui
        w = self.widgets
        if self.session.can_train:
            with gui.add_folder("Training"):
                w["start_stop"] = gui.add_button("Start training")
                w["start_stop"].on_click(lambda event: self.queue(self.on_start_stop))
                w["save_model"] = gui.add_button("Save model")
                w["save_model"].on_click(lambda event: self.queue(self.on_save_model))
                w["status"] = gui.add_markdown("")
        else:
            with gui.add_folder("Saved model"):
                w["status"] = gui.add_markdown("")
        with gui.add_folder("Time"):
            w["time"] = gui.add_slider("time", min=0.0, max=max(self.time_max, self.time_step), step=self.time_step,
                                       initial_value=self.time, disabled=self.time_max <= 0.0)
            w["time"].on_update(self._from_browser(lambda value: self.on_time_slider(value)))
            w["play"] = gui.add_button("Play")
            w["play"].on_click(lambda event: self.queue(self.on_play))
            if self._reference_images is not None:
                w["reference"] = gui.add_image(self._reference_images[0], label="reference frame 0", format="png")
        with gui.add_folder("View"):
            w["scale"] = gui.add_slider("Gaussian scale", min=0.05, max=2.0, step=0.05, initial_value=self.scale)
            w["scale"].on_update(self._from_browser(lambda value: self.on_scale(value)))
            w["reset_view"] = gui.add_button("Reset view")
            w["reset_view"].on_click(lambda event: self._reset_client_camera(event.client))
            w["mode"] = gui.add_dropdown("render mode", RENDER_MODES, initial_value=self.mode)
            w["mode"].on_update(self._from_browser(lambda value: self.on_mode(value)))
            w["render"] = gui.add_button("Render full quality (PNG)")
            w["render"].on_click(lambda event: self.queue(lambda: self.on_render_for(event.client)))
        self._sync_widgets(time_module.monotonic())

    def _from_browser(self, action: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """An ``on_update`` callback that queues ``action(value)`` for changes a browser made (the
        viewer's own updates of a widget call it too, with no client: those are skipped).

        It is a coroutine so that viser runs it on its event loop right after storing the value
        (a plain function would run later on a worker thread and could read a newer value)."""
        async def callback(event: Any) -> None:
            if event.client is None:
                return
            value = event.target.value
            self.queue(lambda: action(value))
        return callback

    def _reference_panel_images(self) -> Optional[list[np.ndarray]]:
        """The reference frames as uint8 images of the panel's size (viser shows them 1:1)."""
        reference = self.session.reference
        if reference is None:
            return None
        frames = reference.detach().float()
        if tuple(frames.shape[-2:]) != (REFERENCE_PANEL_SIZE, REFERENCE_PANEL_SIZE):
            frames = torch.nn.functional.interpolate(frames, size=(REFERENCE_PANEL_SIZE, REFERENCE_PANEL_SIZE),
                                                     mode="bilinear", align_corners=False, antialias=True)
        return [to_uint8(f) for f in frames]

    def _reset_client_camera(self, client: Any) -> None:
        if client is None:
            return
        position = cam_utils.orbit_position(self.home["elevation"], 0.0, self.home["radius"])
        with client.atomic():
            client.camera.position = tuple(position)
            client.camera.look_at = (0.0, 0.0, 0.0)
            client.camera.up_direction = (0.0, 1.0, 0.0)
            client.camera.fov = math.radians(self.home["fovy"])

    # ---- actions only this front end has -------------------------------------------------------
    def on_render_for(self, client: Any) -> Optional[str]:
        """Render ``client``'s current view at full quality through our rasterizer (current time,
        mode, Gaussian scale), save it on this machine and send it to that browser as a download.
        Returns the saved path (None when the browser has gone)."""
        if client is None or client.client_id not in self.server.get_clients():
            return None
        cam = client.camera
        camera = camera_from_browser(cam.position, cam.wxyz, cam.fov, cam.aspect, self.render_height, self.time)
        image = self.render_view(camera)
        path = self.save_view(image)
        client.send_file_download(os.path.basename(path), png_bytes(image), save_immediately=True)
        return path

    # ---- one turn -----------------------------------------------------------------------------
    def run_actions(self, wait: float = 0.0) -> int:
        """Run the queued actions (waiting up to ``wait`` seconds for the first); returns how many ran."""
        count = 0
        try:
            action = self._actions.get(timeout=wait) if wait > 0 else self._actions.get_nowait()
        except queue.Empty:
            return 0
        while True:
            try:
                action()
            except UserError as err:
                self.message = str(err)
            count += 1
            try:
                action = self._actions.get_nowait()
            except queue.Empty:
                return count

    def tick(self, now: Optional[float] = None, wait: float = 0.0) -> None:
        """One turn: queued actions, k training steps (or playback), then the browsers' update: the
        scene when the time or the Gaussian scale changed, or every ``viewer_update_steps`` steps
        of training (at most every ``min_update_interval`` seconds, and when training stops);
        then the widgets."""
        now = time_module.monotonic() if now is None else now
        self.run_actions(wait)
        trained, _ = self.advance(now)
        self._dirty = False  # the controller's own view is not drawn here; the scene is what is shown
        self._steps_since_publish += trained
        if trained and not self.session.running:
            self._scene_stale = True  # training stopped: show where it stopped
        elif trained and self._steps_since_publish >= self.update_steps and self._update_due(now):
            self._scene_stale = True
        if self._shown != (self.time, self.scale):
            self._scene_stale = True
        if self._scene_stale and self.publish_scene():
            self._last_training_update = now
        self._sync_widgets(now)

    def _update_due(self, now: float) -> bool:
        return now - self._last_training_update >= self.min_update_interval

    def publish_scene(self) -> bool:
        """Send the Gaussians at the current time to the browsers; returns whether it did (there is
        nothing to send to without any: the scene then stays stale until one connects)."""
        if self.server is None or not self.server.get_clients():
            return False
        splats = self.scene_at(self.time)
        if self._splats_handle is None:
            self._splats_handle = self.server.scene.add_gaussian_splats(
                SPLATS_NODE, splats.centers, splats.covariances, splats.rgbs, splats.opacities)
        else:
            self._splats_handle.set_gaussians(splats.centers, splats.covariances, splats.rgbs, splats.opacities)
        self.splats = splats
        self._scene_stale = False
        self._steps_since_publish = 0
        self._shown = (self.time, self.scale)
        self.published.append({"step": self.session.step, "time": self.time, "scale": self.scale,
                               "num_gaussians": splats.num})
        return True

    def scene_at(self, time: float) -> Splats:
        """The splats at ``time`` with the current Gaussian scale (cached for saved models)."""
        if self.session.can_train:
            return splats_of(self.session.gaussians_at(time, self.scale))
        key = (round(float(time), 9), float(self.scale))
        cached = self._scene_cache.get(key)
        if cached is None:
            cached = splats_of(self.session.gaussians_at(time, self.scale))
            self._scene_cache[key] = cached
            while len(self._scene_cache) > CACHED_SCENES:
                self._scene_cache.popitem(last=False)
        return cached

    def _sync_widgets(self, now: float) -> None:
        """Show the state on the page: each widget property only when the state behind it changed
        since it was last shown (so a value a browser has just set is never overwritten by the
        state from before its action ran); the status text while training at most every
        ``min_update_interval`` seconds."""
        self._show("time", "value", self.time)
        self._show("play", "label", "Pause" if self.playing else "Play")
        self._show("scale", "value", self.scale)
        self._show("mode", "value", self.mode)
        if self.session.can_train:
            self._show("start_stop", "label", "Pause training" if self.session.running else "Start training")
        if not self.session.running or now - self._last_status >= self.min_update_interval:
            if self._show("status", "content", status_markdown(self.status())):
                self._last_status = now
        frame = self.nearest_frame
        if "reference" in self.widgets and frame is not None:
            if self._show("reference", "label", f"reference frame {frame}"):
                self.widgets["reference"].image = self._reference_images[frame]

    def _show(self, name: str, prop: str, value: Any) -> bool:
        """Set ``widgets[name].<prop> = value`` unless that value is already shown; whether it set it."""
        if self._shown_props.get((name, prop)) == value:
            return False
        setattr(self.widgets[name], prop, value)
        self._shown_props[(name, prop)] = value
        return True

    def run(self) -> None:
        """Turns until :meth:`stop` or Ctrl-C. Between turns it waits for the browsers (at most
        IDLE_WAIT_S, so playback keeps its clock) unless training runs."""
        while not self._stop.is_set():
            training = self.session.can_train and self.session.running
            self.tick(wait=0.0 if training else IDLE_WAIT_S)


# ----------------------------------------------------------------------------------------------
# entry point


def run_web(session: Any, settings: ViewerConfig, camera: CameraConfig, ref_size: int, fps: float) -> WebViewer:
    """Serve the viewer until Ctrl-C. A training run with steps not yet saved is saved at the end.

    Raises:
        UserError: viser is missing.
    """
    viewer = WebViewer(session, settings, camera, ref_size, fps)
    viewer.start()
    if settings.viewer_autostart:
        viewer.on_start_stop()
    print("Ctrl-C stops the viewer" + (" (and saves the run)" if session.can_train else ""), flush=True)
    try:
        viewer.run()
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        viewer.close()
        if session.can_train and (folder := session.save_on_close()) is not None:
            print(f"saved {folder}")
    return viewer


__all__ = ["WebViewer", "camera_from_browser", "forward_hint", "import_viser", "png_bytes", "run_web",
           "status_markdown"]
