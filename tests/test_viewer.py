"""dearpygui viewer (stag4d/viewer/): the controller's callbacks on a tiny CPU trainer without a display, the
saved-model session, one-line errors without a display or without dearpygui, and the real
dearpygui window under Xvfb (skipped when Xvfb is missing or cannot give dearpygui an OpenGL
viewport; that check runs in a subprocess so a GLFW abort cannot kill pytest)."""
import dataclasses
import math
import os
import select
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import cam_utils
from cam_utils import CameraConfig
from gs_renderer import GaussianModel4D
from stag4d import viewer
from stag4d.config import load_config
from stag4d.errors import UserError
from stag4d.training.trainer import Trainer
from stag4d.viewer import ViewerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_FRAMES = 4
REF_SIZE = 32
DISC_RADIUS = 0.35  # world units, at the origin; seen from radius 2 it is a centred disc from every orbit view


def disc_rgba(size: int, frame: int) -> np.ndarray:
    """RGBA uint8 [size, size, 4]: a disc whose colour goes from red (frame 0) to blue (last frame)."""
    focal = cam_utils.fov_to_focal(cam_utils.DEFAULT_FOVY, size)
    radius_px = focal * math.tan(math.asin(DISC_RADIUS / cam_utils.DEFAULT_RADIUS))
    v, u = np.mgrid[0:size, 0:size] + 0.5
    alpha = np.clip(radius_px + 0.5 - np.hypot(u - size / 2, v - size / 2), 0.0, 1.0)
    t = frame / (NUM_FRAMES - 1)
    rgb = np.broadcast_to(np.array([1.0 - t, 0.2, t]), (size, size, 3))
    return (np.concatenate([rgb, alpha[..., None]], axis=-1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def disc_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("disc")
    os.makedirs(root / "ref")
    for i in range(NUM_FRAMES):
        Image.fromarray(disc_rgba(48, i)).save(root / "ref" / f"{i}_rgba.png")
        os.makedirs(root / "zero123" / f"{i}_rgba")
        for k in range(6):
            Image.fromarray(disc_rgba(32, i)).save(root / "zero123" / f"{i}_rgba" / f"{k}.png")
    return str(root)


def tiny_overrides(data: str, tmp_path, extra=()) -> list:
    return [
        f"path={data}", "save_path=disc", f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}",
        "device=cpu", "backend=torch", "num_pts=200", f"ref_size={REF_SIZE}", "anchor_size=32", "batch_size=1",
        "render_res_sizes=[32,32,32]", "kplanes_resolution=[8,8,8,4]", "multires=[1,2]", "kplanes_features=8",
        "net_width=16", "iters=10", "init_steps=1", "valid_interval=0", "save_step=0", "export_frames=false",
        "density_start_iter=1000", "total_steps=100",
    ] + list(extra)


def tiny_trainer(data: str, tmp_path, extra=()):
    cfg = load_config(os.path.join(REPO, "configs", "anchored.yaml"), tiny_overrides(data, tmp_path, extra))
    return Trainer(cfg)


def training_app(trainer, **settings):
    """The viewer app on a training session, with the run's viewer settings (some replaced)."""
    cfg = trainer.cfg
    return viewer.make_app(viewer.TrainingSession(trainer), dataclasses.replace(cfg.viewer, **settings), cfg.camera,
                           cfg.data.ref_size)


def alpha_mean(app: viewer.ViewerApp) -> float:
    return float(app.session.render(app.current_camera(), app.time, app.scale).alpha.mean())


# ---------------------------------------------------------------------------------------------
# without a display


def test_no_display_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    # run_viewer checks before it touches its target: nothing is built, no window is tried
    with pytest.raises(viewer.NoDisplayError) as info:
        viewer.run_viewer(object(), ViewerConfig(gui="dearpygui"), CameraConfig(), 32, 10)
    message = str(info.value)
    assert "\n" not in message
    assert "no display" in message and "DISPLAY" in message
    assert "gui=False" in message and "xvfb-run" in message


def test_unreachable_display_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":54321")  # no X server there: GLFW fails in the probe's child process
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, reason = viewer.probe_viewport()
    assert not ok and reason
    with pytest.raises(viewer.NoDisplayError) as info:
        viewer.require_gui()
    message = str(info.value)
    assert "\n" not in message and ":54321" in message and "xvfb-run" in message


def test_missing_dearpygui_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dearpygui", None)  # makes `import dearpygui...` raise ImportError
    monkeypatch.setitem(sys.modules, "dearpygui.dearpygui", None)
    with pytest.raises(UserError) as info:
        viewer.require_gui()
    message = str(info.value)
    assert "\n" not in message and "pip install dearpygui" in message and "gui=False" in message


def test_headless_imports_load_no_gui_package():
    code = ("import sys, stag4d.viewer, stag4d.training.trainer, stag4d.training.cli; "
            "assert 'dearpygui' not in sys.modules, 'dearpygui imported'; assert 'viser' not in sys.modules, 'viser imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_main_gui_without_display_exits_with_one_line(disc_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    command = [sys.executable, "main.py", "--config", "configs/anchored.yaml", "gui=True"]
    done = subprocess.run(command + tiny_overrides(disc_data, tmp_path), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no display" in errors[0] and "gui=False" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# the controller without a window: the same callbacks the widgets call


def test_controller_callbacks_drive_view_and_training(disc_data, tmp_path):
    trainer = tiny_trainer(disc_data, tmp_path)
    app = training_app(trainer)
    assert app.size == REF_SIZE and app.steps_per_frame == 1
    assert app.update() and app.image.shape == (REF_SIZE, REF_SIZE, 3)
    first = app.image.copy()
    expected = trainer.render(trainer.ref_camera, 0.0).image.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(first, expected, atol=1e-6)  # the home view is the reference camera
    assert not app.update()  # nothing changed: no re-render

    # time slider: clamped to the last frame's time; nearest frame follows
    app.on_time_slider(0.5)
    assert app.nearest_frame == 2
    app.on_time_slider(7.0)
    assert app.time == pytest.approx((NUM_FRAMES - 1) / NUM_FRAMES) and app.nearest_frame == NUM_FRAMES - 1

    # overlay 1 at the reference view = the reference frame at the current time (red at 0, blue at the end)
    app.on_overlay(1.0)
    app.update()
    np.testing.assert_allclose(app.image, trainer.data.ref_rgb[NUM_FRAMES - 1].permute(1, 2, 0).numpy(), atol=1e-6)
    app.on_time_slider(0.0)
    app.update()
    np.testing.assert_allclose(app.image, trainer.data.ref_rgb[0].permute(1, 2, 0).numpy(), atol=1e-6)
    app.on_overlay(0.0)

    # play: one frame per update, wrapping after the last
    app.on_play()
    seen = []
    for _ in range(NUM_FRAMES + 1):
        app.update()
        seen.append(app.nearest_frame)
    app.on_play()
    assert seen == [1, 2, 3, 0, 1]
    app.on_time_slider(0.0)

    # modes: alpha and depth are grey; depth is black where nothing is drawn
    app.on_mode("alpha")
    app.update()
    out = trainer.render(trainer.ref_camera, 0.0)
    np.testing.assert_allclose(app.image[..., 0], out.alpha[0].numpy(), atol=1e-6)
    assert np.array_equal(app.image[..., 0], app.image[..., 2])
    app.on_mode("depth")
    app.update()
    assert np.array_equal(app.image[..., 0], app.image[..., 1])
    assert app.image[out.alpha[0].numpy() < 1e-4].max(initial=0.0) == 0.0 and app.image.max() > 0.5
    with pytest.raises(UserError):
        app.on_mode("normals")
    app.on_mode("image")

    # Gaussian scale: smaller Gaussians cover less
    full = alpha_mean(app)
    app.on_scale(0.3)
    assert alpha_mean(app) < 0.8 * full
    app.on_scale(1.0)

    # camera: orbit changes the view, zoom brings the object closer, reset returns home
    app.on_orbit(300.0, 0.0)  # 90 degrees
    app.update()
    assert np.abs(app.image - first).max() > 0.05
    radius = app.camera.radius
    app.on_zoom(3.0)
    assert app.camera.radius < radius and alpha_mean(app) > full
    app.on_pan(20.0, 0.0)
    assert np.linalg.norm(app.camera.center) > 0
    app.on_reset_view()
    app.update()
    np.testing.assert_allclose(app.image, first, atol=1e-6)

    # PNG of the current view
    png = app.on_save_png(str(tmp_path / "view.png"))
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), (app.image * 255).round().astype(np.uint8))
    default_png = app.on_save_png()
    assert default_png.startswith(os.path.join(trainer.run_folder, "viewer")) and os.path.isfile(default_png)

    # training: start, k steps per displayed frame, stop
    app.on_steps_per_frame(2)
    app.on_start_stop()
    assert app.session.running
    assert app.update()
    assert trainer.step == 2
    status = app.status()
    assert status["step"].startswith("step: 2 / 100") and "Gaussians: 200" == status["gaussians"]
    assert "loss" in app.session.losses and all(math.isfinite(v) for v in app.session.losses.values())
    assert app.session.seconds_per_step > 0 and "ms per step: " in status["speed"]
    assert np.abs(app.image - first).max() > 1e-3  # the view shows the trained model
    app.on_start_stop()
    assert not app.session.running and not app.update() and trainer.step == 2

    # save model
    assert app.session.unsaved
    folder = app.on_save_model()
    assert folder == os.path.join(trainer.run_folder, "2") and os.path.isfile(os.path.join(folder, "checkpoint.pt"))
    assert not app.session.unsaved and folder in app.status()["message"]


def test_periodic_saves_do_not_hold_the_view_and_closing_waits_for_them(disc_data, tmp_path):
    """save_step saves of a training session go to the trainer's writer thread (a slow disk does
    not stall the view); closing the viewer saves the steps since and waits for both saves."""
    from test_background_writes import hold_writer

    from stag4d.training import runs

    trainer = tiny_trainer(disc_data, tmp_path, extra=["save_step=2"])
    session = viewer.TrainingSession(trainer)
    gate = hold_writer(trainer.writer)  # the disk is slow
    threading.Timer(3.0, gate.set).start()  # so that a save that waits fails the test, not hangs it
    assert session.train(3) == 3  # returns although step 2's save is not written yet
    step2 = os.path.join(trainer.run_folder, "2")
    assert not runs.is_complete_step(step2) and session.unsaved
    gate.set()
    assert session.save_on_close() == os.path.join(trainer.run_folder, "3")
    assert runs.is_complete_step(step2) and runs.saved_steps(trainer.run_folder) == [2, 3]
    assert session.save_on_close() is None  # nothing unsaved, nothing in flight
    trainer.close()


def test_training_stops_and_saves_at_total_steps_then_views_the_saved_model(disc_data, tmp_path):
    trainer = tiny_trainer(disc_data, tmp_path, extra=["total_steps=3"])
    app = training_app(trainer, viewer_steps_per_frame=5)
    app.on_start_stop()
    app.update()
    assert trainer.step == 3 and not app.session.running and "finished" in app.message
    folder = os.path.join(trainer.run_folder, "3")
    assert os.path.isfile(os.path.join(folder, "checkpoint.pt")) and not app.session.unsaved
    app.on_start_stop()  # finished: does not start again
    assert not app.session.running
    app.on_time_slider(0.5)
    app.on_orbit(100.0, -40.0)
    app.on_scale(0.7)
    app.update()

    model = GaussianModel4D.load(folder)
    cfg = trainer.cfg
    session = viewer.SavedModelSession(model, cfg.train.backend, data=trainer.data, folder=str(tmp_path / "shots"))
    saved = viewer.make_app(session, cfg.viewer, cfg.camera, cfg.data.ref_size)
    assert not saved.session.can_train and saved.num_frames == NUM_FRAMES
    saved.on_time_slider(0.5)
    saved.on_orbit(100.0, -40.0)
    saved.on_scale(0.7)
    saved.update()
    np.testing.assert_allclose(saved.image, app.image, atol=1e-5)
    saved.on_start_stop()  # no training controls: no-ops
    assert saved.on_save_model() is None and not saved.session.running
    assert "step" not in saved.status()

    # without data or a frame count: continuous time, no overlay
    bare = viewer.make_app(viewer.SavedModelSession(model, folder=str(tmp_path / "shots")), ViewerConfig(viewer_size=24),
                           CameraConfig(), 512)
    assert bare.num_frames is None and bare.time_max == 1.0 and bare.nearest_frame is None
    bare.on_overlay(1.0)
    bare.on_play()
    bare.update()
    assert bare.time == pytest.approx(1.0 / viewer.DEFAULT_PLAY_FRAMES) and bare.image.shape == (24, 24, 3)
    assert bare.on_save_png().startswith(str(tmp_path / "shots"))


# ---------------------------------------------------------------------------------------------
# the real window under Xvfb. Each window runs in its own Python process: dearpygui 2.3 keeps GLFW
# state after destroy_context, so a second window in one process can crash, and a crash there
# must fail one test, not kill pytest.


XVFB_SERVERS: dict = {}  # DISPLAY name -> (Xvfb process, its log): what a failed window reports


def xvfb_state(display: str) -> str:
    """One line on the Xvfb of ``display``: running or not, its socket, the end of its log."""
    if display not in XVFB_SERVERS:
        return f"no Xvfb of this module on {display}"
    server, log_path = XVFB_SERVERS[display]
    socket_path = f"/tmp/.X11-unix/X{display.lstrip(':')}"
    status = "running" if server.poll() is None else f"exited with status {server.returncode}"
    log = " | ".join(log_path.read_text(errors="replace").splitlines()[-5:])
    return f"Xvfb {display} {status}; socket {socket_path} {'present' if os.path.exists(socket_path) else 'missing'}; " \
           f"log: {log or '(empty)'}"


@pytest.fixture(scope="module")
def xvfb_server(tmp_path_factory):
    """A private Xvfb server: (DISPLAY name, process, log path). Skips when dearpygui cannot open a
    viewport there. ``-noreset``: by default Xvfb regenerates itself whenever its last client leaves
    (here, after every window), and a server that dies in that reset fails the next window's test."""
    pytest.importorskip("dearpygui")
    executable = shutil.which("Xvfb")
    if executable is None:
        pytest.skip("Xvfb is not installed (apt-get install -y xvfb xauth libgl1-mesa-dri)")
    log_path = tmp_path_factory.mktemp("xvfb") / "xvfb.log"
    log = open(log_path, "wb")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen([executable, "-displayfd", str(write_fd), "-screen", "0", "1024x768x24",
                               "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,), stdout=log, stderr=log)
    os.close(write_fd)

    def stop() -> None:
        server.terminate()
        server.wait(timeout=10)
        os.close(read_fd)  # only now: Xvfb dies of SIGPIPE when it writes to a closed pipe
        log.close()

    ready, _, _ = select.select([read_fd], [], [], 30.0)
    number = os.read(read_fd, 64).decode().strip() if ready else ""
    if not number.isdigit():
        stop()
        pytest.skip("Xvfb did not start")
    display = f":{number}"
    ok, reason = viewer.probe_viewport(display_env(display))
    if not ok:
        stop()
        pytest.skip(f"dearpygui cannot open an OpenGL viewport under Xvfb: {reason}")
    XVFB_SERVERS[display] = (server, log_path)
    yield display, server, log_path
    XVFB_SERVERS.pop(display, None)
    stop()


@pytest.fixture
def xvfb_display(xvfb_server) -> str:
    """The shared Xvfb's DISPLAY name, after checking that the server is still running."""
    display, server, log_path = xvfb_server
    if server.poll() is not None:
        pytest.fail(f"Xvfb {display} exited (status {server.returncode}) before this test; its log:\n"
                    f"{log_path.read_text(errors='replace')[-2000:]}")
    return display


def display_env(display: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    env["DISPLAY"] = display
    return env


def run_scenario(name: str, display: str, data: str, tmp_path) -> None:
    """Run ``name(data, tmp_path)`` of this module in a child process on ``display``; fail with its output."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_viewer; "
            f"test_viewer.{name}({data!r}, {str(tmp_path)!r})")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=display_env(display), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (f"{name} failed (status {done.returncode}); {xvfb_state(display)}:\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def window_scenario(data: str, tmp: str) -> None:
    """Build the window on a tiny trainer, drive it through the widgets' callbacks, screenshot it."""
    import pathlib

    import dearpygui.dearpygui as dpg

    torch.set_num_threads(2)
    tmp_path = pathlib.Path(tmp)
    viewer.require_gui()  # the display check passes here
    trainer = tiny_trainer(data, tmp_path)
    app = training_app(trainer, viewer_size=64)
    app.build()
    try:
        for _ in range(3):
            app.frame()
        assert app.is_open() and app.frames_rendered == 1  # rendered once, then idle

        # the widgets' own callbacks (what dearpygui calls on a drag / click)
        dpg.get_item_callback("time_slider")("time_slider", 0.5)
        app.frame()
        assert app.nearest_frame == 2 and abs(dpg.get_value("time_slider") - 0.5) < 1e-6
        assert "frame 2 / 4" in dpg.get_value("status_frame")
        dpg.get_item_callback("start_stop")("start_stop", None)
        app.frame()  # one training step, then the render
        assert trainer.step == 1 and dpg.get_value("status_step").startswith("step: 1 / 100")
        assert dpg.get_item_label("start_stop") == "Stop training"
        dpg.get_item_callback("start_stop")("start_stop", None)
        app.frame()
        assert trainer.step == 1 and dpg.get_item_label("start_stop") == "Start training"

        shot = app.screenshot()
        Image.fromarray(shot).save(tmp_path / "window.png")
        left, top, right, bottom = app.view_box()
        view = shot[top:bottom, left:right].astype(np.float32)
        assert view.shape == (64, 64, 3), view.shape
        # what is on screen is the rendered view, 1:1
        difference = np.abs(view - app.image * 255.0).max()
        assert difference <= 3.0, difference
        # not blank: a grey cloud on the white background
        assert view.std() > 5.0, view.std()
        assert view[:4, :4].min() > 240 and view[24:40, 24:40].mean() < 230, (view[:4, :4].min(), view[24:40, 24:40].mean())

        # a change shows up in the very next screenshot (the framebuffer lags two frames behind)
        dpg.get_item_callback("mode")("mode", "alpha")
        alpha_shot = app.screenshot()[top:bottom, left:right].astype(np.float32)
        assert dpg.get_value("mode") == "alpha"
        assert np.abs(alpha_shot - app.image * 255.0).max() <= 3.0
        assert np.abs(alpha_shot - view).max() > 50.0
        # state changed by a method (not by its widget) is shown on the widgets
        app.on_scale(0.5)
        app.on_overlay(0.25)
        app.frame()
        assert dpg.get_value("scale") == 0.5 and dpg.get_value("overlay") == 0.25
    finally:
        app.close()


def run_viewer_scenario(data: str, tmp: str) -> None:
    """run_viewer's loop: start training, two frames, close the window; unsaved steps get saved."""
    import pathlib

    import dearpygui.dearpygui as dpg

    torch.set_num_threads(2)
    trainer = tiny_trainer(data, pathlib.Path(tmp))
    frames = []
    original = viewer.ViewerApp.frame

    def frame_then_close(self):
        if not frames:
            self.on_start_stop()
        original(self)
        frames.append(self.session.step)
        if len(frames) == 2:
            dpg.stop_dearpygui()  # what closing the window does

    viewer.ViewerApp.frame = frame_then_close
    cfg = trainer.cfg
    app = viewer.run_viewer(viewer.TrainingSession(trainer), dataclasses.replace(cfg.viewer, viewer_size=48, gui=True),
                            cfg.camera, cfg.data.ref_size, cfg.output.video_fps)
    assert frames == [1, 2] and app._dpg is None, frames
    assert os.path.isfile(os.path.join(trainer.run_folder, "2", "checkpoint.pt"))


@pytest.mark.slow
def test_window_shows_the_model_and_widgets_drive_it(disc_data, tmp_path, xvfb_display):
    run_scenario("window_scenario", xvfb_display, disc_data, tmp_path)
    assert (tmp_path / "window.png").is_file()


@pytest.mark.slow
def test_run_viewer_loop_until_the_window_closes(disc_data, tmp_path, xvfb_display):
    run_scenario("run_viewer_scenario", xvfb_display, disc_data, tmp_path)
