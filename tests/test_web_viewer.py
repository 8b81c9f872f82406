"""The web viewer (gui=web, stag4d/viewer/web.py).

Server side, without a browser: the splats the page draws (against the rasterizer's own
covariances), the browser camera -> our camera, what the viewer publishes on a saved model
(time, playback at the video's fps, the reference frame, the Gaussian scale) and on a live tiny
trainer (a scene update every N steps, several browsers, browsers that disconnect), driven by fake
browsers that speak viser's websocket protocol; main.py gui=web stopped by Ctrl-C saves.

In a real browser (headless Chromium through Playwright; skipped without them): the page of a saved
moving model, screenshots at two times, play/pause, the full-quality download; and a live CPU
trainer whose step counter advances on the page while a second page comes and goes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import cam_utils
from cam_utils import CameraConfig
from stag4d import viewer
from stag4d.config import load_config
from stag4d.errors import UserError
from stag4d.rasterizer import GaussianParams
from stag4d.rasterizer.sh import SH_C0
from stag4d.training.trainer import Trainer
from stag4d.viewer import web
from stag4d.viewer.config import ViewerConfig
from stag4d.viewer.splats import splats_of
from web_helpers import (CHROMIUM_ARGS, FakeBrowser, blob_shift, canvas_pixels, find_chromium, make_ball_dataset,
                         moving_model, object_mask, page_rects, save_run, wait_for)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 8
FPS = 10
PAGE_WIDTH, PAGE_HEIGHT = 960, 540  # small: software WebGL on 2 cores draws every pixel
TINY_TRAIN = [
    "device=cpu", "backend=torch", "num_pts=200", "ref_size=32", "anchor_size=32", "batch_size=1",
    "render_res_sizes=[32,32,32]", "kplanes_resolution=[8,8,8,4]", "multires=[1,2]", "kplanes_features=8",
    "net_width=16", "iters=10", "init_steps=2", "valid_interval=0", "save_step=0", "export_frames=false",
    "density_start_iter=1000", "log_interval=5",
]


@pytest.fixture(scope="module")
def ball_data(tmp_path_factory) -> str:
    return make_ball_dataset(str(tmp_path_factory.mktemp("ball")), num_frames=T)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> str:
    """logs/ball/5: the moving model, saved as a trainer saves (outdir returned)."""
    outdir = tmp_path_factory.mktemp("logs")
    save_run(moving_model(), str(outdir / "ball" / "5"))
    return str(outdir)


def web_settings(**values) -> ViewerConfig:
    return ViewerConfig(**{"gui": "web", "viewer_port": 0, **values})


def saved_viewer(ball_data: str, **settings) -> web.WebViewer:
    """A started web viewer on the moving model, with the data's frames as references."""
    from stag4d.data.frames import load_frames

    data = load_frames(ball_data, 32, 32, T, require_anchors=False)
    session = viewer.SavedModelSession(moving_model(), backend="torch", data=data, folder="unused")
    app = web.WebViewer(session, web_settings(**settings), CameraConfig(), 32, FPS)
    app.start(announce=False)
    return app


def tiny_trainer(data: str, tmp_path, extra=()) -> Trainer:
    overrides = TINY_TRAIN + [f"path={data}", "save_path=ball", f"outdir={tmp_path / 'logs'}",
                              f"valid_dir={tmp_path / 'valid'}", "total_steps=100"] + list(extra)
    return Trainer(load_config(os.path.join(REPO, "configs", "anchored.yaml"), overrides))


def connect(app: web.WebViewer, count: int = 1) -> list[FakeBrowser]:
    """``count`` fake browsers, once the server counts them all."""
    before = app.num_clients
    browsers = [FakeBrowser(app.port) for _ in range(count)]
    wait_for(lambda: app.num_clients == before + count)
    return browsers


def disconnect(app: web.WebViewer, browser: FakeBrowser) -> None:
    before = app.num_clients
    browser.close()
    wait_for(lambda: app.num_clients == before - 1)


def tick_until(app: web.WebViewer, condition, timeout: float = 10.0, now=None) -> None:
    """Turns of the viewer until ``condition()`` (actions from fake browsers arrive asynchronously)."""
    wait_for(condition, timeout=timeout, during=lambda: app.tick(now=now))


# ------------------------------------------------------------------------------------------------
# what the browser draws


def test_splats_are_the_gaussians_the_rasterizer_draws():
    angle = math.radians(90.0)  # about z: the local x axis becomes world y
    gaussians = GaussianParams(
        means=torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0]]),
        log_scales=torch.log(torch.tensor([[0.1, 0.2, 0.3], [0.05, 0.05, 0.05]])),
        quats=torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)], [2.0, 0.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0, math.log(3.0)]),
        sh=torch.tensor([[[0.5, -0.5, 10.0]], [[0.0, 0.0, 0.0]]]),
    )
    splats = splats_of(gaussians)
    np.testing.assert_allclose(splats.centers, gaussians.means.numpy())
    np.testing.assert_allclose(splats.covariances[0], np.diag([0.2 ** 2, 0.1 ** 2, 0.3 ** 2]), atol=1e-7)
    np.testing.assert_allclose(splats.covariances[1], np.eye(3) * 0.05 ** 2, atol=1e-8)  # quaternion normalized
    np.testing.assert_allclose(splats.opacities[:, 0], [0.5, 0.75], atol=1e-6)
    np.testing.assert_allclose(splats.rgbs[0], [0.5 + 0.5 * SH_C0, 0.5 - 0.5 * SH_C0, 1.0], atol=1e-6)  # clamped
    np.testing.assert_allclose(splats.rgbs[1], [0.5, 0.5, 0.5])
    plain = splats_of(dataclasses.replace(gaussians, sh=None, colors=torch.tensor([[0.2, 0.4, 1.5], [0.0, 0.1, 0.2]])))
    np.testing.assert_allclose(plain.rgbs, [[0.2, 0.4, 1.0], [0.0, 0.1, 0.2]], atol=1e-7)
    # a Gaussian scale of 0.5 (through the model) quarters the covariances
    model = moving_model(num=20)
    with torch.no_grad():
        full, half = splats_of(model.gaussians_at(0.25)), splats_of(model.gaussians_at(0.25, 0.5))
    np.testing.assert_allclose(half.covariances, full.covariances * 0.25, rtol=1e-5)


@pytest.mark.parametrize("elevation, azimuth", [(0.0, 0.0), (-30.0, 45.0), (20.0, 200.0)])
def test_browser_camera_is_our_camera(elevation, azimuth):
    import viser.transforms as tf

    pose = cam_utils.opengl_to_opencv(cam_utils.orbit_camera(elevation, azimuth, 2.0))  # viser's axes are OpenCV's
    wxyz = tf.SO3.from_matrix(pose[:3, :3]).wxyz
    camera = web.camera_from_browser(pose[:3, 3], wxyz, math.radians(49.1), 1.0, 32, time=0.25)
    expected = cam_utils.Camera.orbit(elevation, azimuth, 2.0, 49.1, 32)
    torch.testing.assert_close(camera.world_to_camera, expected.world_to_camera, atol=1e-5, rtol=0)
    assert (camera.width, camera.height, camera.time) == (32, 32, 0.25) and camera.fovy == pytest.approx(49.1)
    assert web.camera_from_browser(pose[:3, 3], wxyz, 0.8, 1.75, 100).width == 175


def test_status_markdown_lists_the_losses():
    text = web.status_markdown({"step": "step: 3 / 9", "losses": "losses:\n  loss: 0.5\n  ref_rgb: 0.25",
                                "gaussians": "Gaussians: 7", "message": ""})
    assert text.split("  \n") == ["step: 3 / 9", "Gaussians: 7", "losses:", "- loss: 0.5", "- ref_rgb: 0.25"]


# ------------------------------------------------------------------------------------------------
# settings and errors


def test_missing_viser_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)
    with pytest.raises(UserError) as info:
        viewer.require_front_end(web_settings())
    message = str(info.value)
    assert "\n" not in message and "pip install viser" in message and "gui=False" in message
    viewer.require_front_end(ViewerConfig(gui="off"))  # nothing to check


def test_start_prints_the_url_and_the_ssh_forward_line(ball_data, capsys):
    app = saved_viewer(ball_data)
    try:
        port = app.port
        assert port > 0 and app.url == f"http://127.0.0.1:{port}"
        app.close()
        app = web.WebViewer(app.session, web_settings(viewer_port=port), CameraConfig(), 32, FPS)
        app.start()  # the port is free again: taken as configured
        out = capsys.readouterr().out
        assert app.port == port and f"web viewer: http://127.0.0.1:{port}" in out
        assert re.search(rf"ssh -N -L {port}:127\.0\.0\.1:{port} \S+@\S+", out), out
        assert web.forward_hint("0.0.0.0", 8080)[0] == "http://127.0.0.1:8080"
    finally:
        app.close()


# ------------------------------------------------------------------------------------------------
# a saved model


def test_saved_model_scene_time_playback_and_scale(ball_data):
    app = saved_viewer(ball_data)
    try:
        app.tick()
        assert app.splats is None and not app.published  # no browser: nothing computed or sent
        client, = connect(app)
        tick_until(app, lambda: app.published)
        first = app.published[-1]
        assert (first["time"], first["scale"], first["num_gaussians"]) == (0.0, 1.0, 400)
        np.testing.assert_allclose(app.splats.centers, splats_of(app.session.gaussians_at(0.0)).centers)
        # the buffer viser sends holds those centres
        sent = app._splats_handle.buffer[:, 0:3].copy().view(np.float32)
        np.testing.assert_array_equal(sent, app.splats.centers.astype(np.float32))
        widgets = app.widgets
        assert widgets["reference"].label == "reference frame 0" and "frame 0 / 8" in widgets["status"].content

        # the browser's time slider: the scene moves to that time (+x), the reference frame follows
        client.set_value(widgets["time"], 0.5)
        tick_until(app, lambda: app.published[-1]["time"] == 0.5)
        shift = app.splats.centers.mean(0) - splats_of(app.session.gaussians_at(0.0)).centers.mean(0)
        assert shift[0] == pytest.approx(blob_shift(0.5), abs=1e-4) and abs(shift[1]) < 1e-6
        assert app.nearest_frame == 4 and widgets["reference"].label == "reference frame 4"
        assert "frame 4 / 8" in widgets["status"].content

        # play at the video's fps (10): frames come on the clock, late turns skip frames
        client.click(widgets["play"])
        tick_until(app, lambda: app.playing, now=100.0)  # playback starts at 100 s
        assert widgets["play"].label == "Pause" and app.nearest_frame == 4
        app.tick(now=100.05)
        assert app.nearest_frame == 4  # half a frame later: still frame 4
        app.tick(now=100.1)
        assert app.nearest_frame == 5 and app.published[-1]["time"] == 5 / T
        app.tick(now=100.45)
        assert app.nearest_frame == 0 and widgets["time"].value == 0.0  # 3 frames more (0.45 s: frame 4 of the clock), wrapped
        client.click(widgets["play"])
        tick_until(app, lambda: not app.playing, now=100.45)  # no frame is due until Pause arrives
        app.tick(now=300.0)
        assert app.nearest_frame == 0 and widgets["play"].label == "Play"

        # Gaussian scale: smaller splats; the scene of a time is computed once (saved model)
        sent_count = len(app.published)
        client.set_value(widgets["scale"], 0.5)
        tick_until(app, lambda: app.published[-1]["scale"] == 0.5)
        assert len(app.published) == sent_count + 1
        np.testing.assert_allclose(app.splats.covariances,
                                   splats_of(app.session.gaussians_at(0.0)).covariances * 0.25, rtol=1e-5)
        assert app.scene_at(0.0) is app.scene_at(0.0)
        app.tick()
        assert len(app.published) == sent_count + 1  # nothing changed: nothing sent
        assert client.received_bytes > 400 * 32  # the splats did go over the wire
        # a browser that joins now gets the current scene from viser's replay, not a second send
        late, = connect(app)
        wait_for(lambda: late.received_bytes > 400 * 32)
        app.tick()
        assert len(app.published) == sent_count + 1
    finally:
        app.close()


# ------------------------------------------------------------------------------------------------
# a live trainer


def test_training_updates_every_n_steps_for_any_number_of_browsers(ball_data, tmp_path):
    trainer = tiny_trainer(ball_data, tmp_path)
    session = viewer.TrainingSession(trainer)
    app = web.WebViewer(session, web_settings(viewer_update_steps=3), trainer.cfg.camera, 32, FPS)
    app.min_update_interval = 0.0  # exactly every 3 steps, however fast the tiny steps are
    app.start(announce=False)
    try:
        first, second = connect(app, 2)
        tick_until(app, lambda: app.published)
        assert [p["step"] for p in app.published] == [0]
        first.click(app.widgets["start_stop"])  # a browser presses Start
        tick_until(app, lambda: trainer.step >= 1)
        while trainer.step < 6:
            app.tick()
        assert [p["step"] for p in app.published] == [0, 3, 6]  # every 3 steps, for both browsers
        np.testing.assert_array_equal(app.splats.centers, trainer.gaussians_at(0.0).means.numpy())
        app.tick()
        assert [p["step"] for p in app.published] == [0, 3, 6]
        assert app.widgets["start_stop"].label == "Pause training"
        status = app.widgets["status"].content
        assert "step: 7 / 100" in status and "Gaussians: 200" in status and "ms per step: " in status
        assert re.search(r"- loss: [0-9.e-]+", status), status

        # one browser leaves: training goes on, the other keeps getting updates
        disconnect(app, second)
        for _ in range(3):
            app.tick()
        assert trainer.step == 10 and session.running and [p["step"] for p in app.published][-1] == 9
        # the last one leaves: training goes on; nothing is computed for nobody
        disconnect(app, first)
        for _ in range(5):
            app.tick()
        assert trainer.step == 15 and session.running and app.published[-1]["step"] == 9
        assert "step: 15 / 100" in app.widgets["status"].content  # state kept for the next browser
        # a new browser gets the current scene at once
        third, = connect(app)
        tick_until(app, lambda: app.published[-1]["step"] >= 16)
        third.click(app.widgets["start_stop"])  # Pause
        tick_until(app, lambda: not session.running)
        paused_at = trainer.step
        for _ in range(3):
            app.tick()
        assert trainer.step == paused_at and app.widgets["start_stop"].label == "Start training"
        # save from the page
        third.click(app.widgets["save_model"])
        tick_until(app, lambda: "saved" in app.message)
        assert os.path.isfile(os.path.join(trainer.run_folder, str(paused_at), "checkpoint.pt"))
        third.close()
    finally:
        app.close()


@pytest.mark.slow
def test_main_gui_web_trains_headless_until_ctrl_c_then_saves(ball_data, tmp_path):
    """main.py gui=web with no browser at all: it serves, trains (autostart) and on Ctrl-C saves."""
    command = [sys.executable, "main.py", "--config", "configs/anchored.yaml", "gui=web", "viewer_port=0",
               "viewer_autostart=true", *TINY_TRAIN, f"path={ball_data}", "save_path=ball",
               f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}", "total_steps=100000"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = read_until(process, "Ctrl-C stops the viewer")
        assert any(re.match(r"web viewer: http://127\.0\.0\.1:\d+$", line) for line in lines), lines
        time.sleep(3.0)  # training (it started by itself; no browser is needed)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    saved = re.findall(r"^saved (\S+)$", out, flags=re.M)
    assert len(saved) == 1 and os.path.isfile(os.path.join(saved[0], "checkpoint.pt")), out
    assert int(os.path.basename(saved[0])) >= 1 and "Traceback" not in err


def read_until(process: subprocess.Popen, marker: str, timeout: float = 120.0) -> list[str]:
    """Lines of ``process``'s stdout up to the one containing ``marker``."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if marker in line:
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout):
        process.kill()
        raise AssertionError(f"no '{marker}' within {timeout} s: {lines} {process.stderr.read()[-2000:]}")
    return lines


def url_of(lines: list[str]) -> str:
    return next(line.split(": ", 1)[1] for line in lines if line.startswith("web viewer: "))


# ------------------------------------------------------------------------------------------------
# a real browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright; skips (with the reason) when either is missing."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set STAG4D_CHROMIUM)")
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
    except PlaywrightError as err:
        manager.stop()
        pytest.skip(f"Chromium at {executable} does not start under Playwright: {str(err).splitlines()[0]}")
    yield chromium
    chromium.close()
    manager.stop()


def shots_folder(tmp_path) -> str:
    """Where the browser tests leave their screenshots: $STAG4D_WEB_SHOTS (to look at them) or tmp."""
    folder = os.environ.get("STAG4D_WEB_SHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": PAGE_WIDTH, "height": PAGE_HEIGHT}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("canvas")
    return page


def settled_view(page, timeout: float = 20.0) -> np.ndarray:
    """The 3D view (panels masked) once two screenshots 0.3 s apart agree (the splats are sorted
    and drawn in the page's own time)."""
    covered = page_rects(page, ".mantine-Paper-root, .mantine-Notifications-root > *")
    previous = canvas_pixels(page, covered)
    end = time.monotonic() + timeout
    while True:
        time.sleep(0.3)
        shot = canvas_pixels(page, covered)
        if np.array_equal(np.nan_to_num(shot), np.nan_to_num(previous)) and object_mask(shot, central=True).any():
            return shot
        if time.monotonic() > end:
            raise AssertionError("the view did not settle")
        previous = shot


def set_time_input(page, value: float) -> None:
    """Type a time into the time slider's number box (as a user does; arrow keys would orbit)."""
    label = page.locator("label", has_text=re.compile(r"^time$")).first
    row = label.locator("xpath=ancestor::div[contains(@class,'mantine-Flex-root')][1]")
    box = row.locator("input.mantine-NumberInput-input").first
    text = f"{value:g}"
    # Key by key, as a user types: a box showing "0" after playback ignores fill()'s single
    # insertText of "0.5" (react-number-format keeps "0"), so the time never changed (1 in 8 runs).
    box.click()
    box.press("ControlOrMeta+a")
    box.press_sequentially(text)
    assert box.input_value() == text, f"the time box shows {box.input_value()!r} after typing {text!r}"
    box.press("Tab")  # leave the box: while it has the focus it may not show the server's later values


@pytest.mark.slow
def test_browser_shows_a_saved_model_at_two_times_and_plays(browser, saved_run, ball_data, tmp_path):
    folder = shots_folder(tmp_path)
    command = [sys.executable, "visualize.py", "--config", "configs/stag4d.yaml", "gui=web", "viewer_port=0",
               "save_path=ball", f"outdir={saved_run}", f"path={ball_data}", f"num_frames={T}", "ref_size=32",
               "device=cpu", "backend=torch", f"video_fps={FPS}", "viewer_size=96"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = url_of(read_until(process, "Ctrl-C stops the viewer"))
        page = open_page(browser, url)
        page.get_by_text("frame 0 / 8").wait_for()
        first = settled_view(page)
        page.screenshot(path=os.path.join(folder, "saved_t0.png"))
        set_time_input(page, 0.5)
        page.get_by_text("frame 4 / 8").wait_for()
        later = settled_view(page)
        page.screenshot(path=os.path.join(folder, "saved_t05.png"))

        # not blank: a ball of many colours on white, in the middle of the view
        masks = [object_mask(first, central=True), object_mask(later, central=True)]
        for shot, mask in zip((first, later), masks):
            assert 500 < mask.sum() < 0.2 * mask.size, mask.sum()
            assert np.nanstd(shot[mask]) > 10.0
        # they differ where the ball moved: it slid right (world +x) by the model's shift
        columns = [np.nonzero(mask.any(axis=0))[0] for mask in masks]
        centres = [float(np.argwhere(mask)[:, 1].mean()) for mask in masks]
        focal = PAGE_HEIGHT / 2 / math.tan(math.radians(49.1) / 2)
        expected = focal * blob_shift(0.5) / 2.0  # pixels, at the orbit radius 2
        assert centres[1] - centres[0] == pytest.approx(expected, rel=0.25), (centres, expected)
        changed = np.nan_to_num(np.abs(first - later).max(axis=-1)) > 30
        assert changed.any()
        left, right = min(c.min() for c in columns), max(c.max() for c in columns)
        changed_columns = np.nonzero(changed.any(axis=0))[0]
        assert left - 10 <= changed_columns.min() and changed_columns.max() <= right + 10  # only around the ball

        # play: the frame advances on its own; pause: it stops
        page.get_by_role("button", name="Play").click()
        page.get_by_role("button", name="Pause").wait_for()
        frame = re.compile(r"frame (\d) / 8")
        seen = {int(frame.search(page.inner_text("body")).group(1))}
        wait_for(lambda: seen.add(int(frame.search(page.inner_text("body")).group(1))) or len(seen) >= 3, timeout=20)
        page.get_by_role("button", name="Pause").click()
        page.get_by_role("button", name="Play").wait_for()
        stopped = frame.search(page.inner_text("body")).group(1)
        time.sleep(0.7)
        assert frame.search(page.inner_text("body")).group(1) == stopped

        # the full-quality render of this view, downloaded: our rasterizer, 96 px high, the view's aspect
        target = 4 if stopped != "4" else 2  # a change (typing the shown value sends nothing)
        set_time_input(page, target / T)
        page.get_by_text(f"frame {target} / 8").wait_for()
        view = settled_view(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="Render full quality (PNG)").click()
        path = os.path.join(folder, f"saved_render_frame{target}.png")
        download.value.save_as(path)
        render = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        assert render.shape == (96, round(96 * PAGE_WIDTH / PAGE_HEIGHT), 3)
        # the ball is where the browser shows it (same camera): centre as a fraction of the width
        mask = object_mask(render)
        browser_centre = np.argwhere(object_mask(view, central=True))[:, 1].mean() / PAGE_WIDTH
        assert np.argwhere(mask)[:, 1].mean() / render.shape[1] == pytest.approx(browser_centre, abs=0.03)
        page.close()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


@pytest.mark.slow
def test_browser_watches_live_training_while_a_second_page_comes_and_goes(browser, ball_data, tmp_path):
    trainer = tiny_trainer(ball_data, tmp_path, extra=["total_steps=100000"])
    session = viewer.TrainingSession(trainer)
    app = web.WebViewer(session, web_settings(viewer_update_steps=2), trainer.cfg.camera, 32, FPS)
    app.start(announce=False)
    loop = threading.Thread(target=app.run)  # the viewer's thread owns the trainer, as main.py's does
    loop.start()
    counter = re.compile(r"step: (\d+) / 100000")

    def step_on(page) -> int:
        return int(counter.search(page.inner_text("body")).group(1))

    try:
        page = open_page(browser, app.url)
        page.get_by_text("step: 0 / 100000").wait_for()
        page.get_by_role("button", name="Start training").click()
        page.get_by_role("button", name="Pause training").wait_for()
        wait_for(lambda: step_on(page) >= 2, timeout=30)
        second = open_page(browser, app.url)
        wait_for(lambda: step_on(second) >= 2, timeout=30)
        second.close()  # a browser leaves
        at_close = step_on(page)
        wait_for(lambda: step_on(page) >= at_close + 3, timeout=30)  # training goes on
        assert loop.is_alive() and session.running
        page.screenshot(path=os.path.join(shots_folder(tmp_path), "training.png"))
        page.get_by_role("button", name="Pause training").click()
        page.get_by_role("button", name="Start training").wait_for()
        paused = step_on(page)
        time.sleep(0.7)
        assert step_on(page) == paused == trainer.step
        assert re.search(r"ms per step: \d", page.inner_text("body"))
        page.close()
    finally:
        app.stop()
        loop.join(timeout=60)
        app.close()
