"""visualize.py and the video helpers on a tiny hand-built model with a nonzero, smooth deformation."""
import math
import os
import types

import numpy as np
import pytest
import torch

import cam_utils
from cam_utils import CameraConfig
from gs_renderer import GaussianModel4D
from stag4d.config import config_from_dict, load_config, to_yaml
from stag4d.data import video as video_utils
from stag4d.errors import UserError
from stag4d.evaluation import visualize
from stag4d.evaluation.saved_model import frame_count
from stag4d.files import save_image, torch_save
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.rasterizer import render
from stag4d.training import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "stag4d.yaml")
T = 4
SIZE = 32
TRACK_NAMES = ("front", "back", "front_moving", "back_moving", "round")


def tiny_model(seed: int = 0, shift: float = 0.0) -> GaussianModel4D:
    """300 coloured Gaussians; the time planes vary smoothly (a sine) so the model moves with t."""
    torch.manual_seed(seed)
    cfg = DeformationConfig(kplanes_features=4, kplanes_resolution=[4, 4, 4, 17], multires=[1], net_width=8,
                            time_mapping="full")
    model = GaussianModel4D(sh_degree=0, deformation=cfg)
    g = torch.Generator().manual_seed(seed)
    n = 300
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8 + torch.tensor([shift, 0.0, 0.0])
    model.set_gaussians(means, (torch.rand(n, 1, 3, generator=g) - 0.5) * 3.0, torch.zeros(n, 0, 3),
                        torch.full((n, 3), math.log(0.05)), torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
                        torch.full((n,), 2.0))
    field = model.deformation
    with torch.no_grad():
        for planes in field.grid.time_planes:  # [3, C, T, R]: a smooth function of t per texel column
            t = torch.linspace(0.0, 1.0, planes.shape[2]).view(1, 1, -1, 1)
            phase = torch.rand(planes.shape[0], planes.shape[1], 1, planes.shape[3], generator=g) * 2 * math.pi
            planes.copy_(1.0 + 0.8 * torch.sin(2 * math.pi * t + phase))
        # Moderate offsets: no constant shift, small scale and rotation changes.
        field.position_head[-1].weight.mul_(0.5)
        field.position_head[-1].bias.zero_()
        field.scale_head[-1].weight.mul_(0.2)
        field.scale_head[-1].bias.zero_()
        field.rotation_head[-1].bias.zero_()
    return model


def direct_render(model, azimuth: float, time: float, size: int = SIZE, elevation: float = 0.0):
    camera = cam_utils.Camera.orbit(elevation, azimuth, 2.0, 49.1, size, time=time)
    with torch.no_grad():
        return render(model.gaussians_at(time), camera, torch.ones(3), backend="torch")


def image_u8(out) -> np.ndarray:
    return video_utils.to_uint8(out.image)


def save_step(model: GaussianModel4D, folder: str) -> None:
    """What a trainer's save leaves: the model files, then (last) the checkpoint that completes it."""
    model.save(folder)
    torch_save({"format": 1}, os.path.join(folder, runs.CHECKPOINT_FILE))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """logs/run/5 = the model, logs/run/10 = the model shifted by +0.3 in x, logs/run/7 and 12 =
    interrupted saves (no checkpoint.pt: not complete)."""
    root = tmp_path_factory.mktemp("visualize")
    save_step(tiny_model(0), str(root / "logs" / "run" / "5"))
    save_step(tiny_model(0, shift=0.3), str(root / "logs" / "run" / "10"))
    (root / "logs" / "run" / "7").mkdir()
    (root / "logs" / "run" / "7" / "model.ply").write_bytes(b"")
    tiny_model(0, shift=-0.3).save(str(root / "logs" / "run" / "12"))  # killed before its checkpoint
    return root


def cli_args(root, *extra):
    return ["--config", CONFIG, "save_path=run", f"outdir={root / 'logs'}", f"valid_dir={root / 'valid'}",
            "device=cpu", "backend=torch", f"num_frames={T}", f"resolution={SIZE}", *extra]


# ------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def cli_run(workspace):
    """One CLI run with every mode and a small contact sheet (latest step = 10)."""
    visualize.main(cli_args(workspace, "modes=[image,depth,alpha]", "sheet_times=2", "sheet_azimuths=[0,90,180]",
                            "sheet_size=24", "background=white"))
    return workspace / "valid" / "run"


def test_cli_writes_every_video_and_the_contact_sheet(cli_run):
    expected = {f"video_{name}{suffix}.mp4" for name in TRACK_NAMES for suffix in ("", "_depth", "_alpha")}
    expected.add("contact_sheet.png")
    assert set(os.listdir(cli_run)) == expected  # no temporary files left behind
    for name in expected - {"contact_sheet.png"}:
        frames = video_utils.read_video(str(cli_run / name))
        assert frames.shape == (T, SIZE, SIZE, 3), name
        info = video_utils.video_info(str(cli_run / name))
        assert info["codec"] == "h264" and info["pix_fmt"].startswith("yuv420p") and info["fps"] == 10.0, info
    import imageio.v2 as imageio  # a second decoder agrees on the frame count

    assert len(imageio.mimread(str(cli_run / "video_round.mp4"))) == T


def test_cli_contact_sheet_layout(cli_run):
    from PIL import Image

    sheet = np.asarray(Image.open(cli_run / "contact_sheet.png"))
    # 2 rows x 3 columns of 24 px tiles, 2 px gaps, plus label margins on the top and the left.
    assert sheet.shape[0] > 2 * 24 + 3 * 2 and sheet.shape[1] > 3 * 24 + 4 * 2
    assert sheet.shape[0] < 2 * 24 + 3 * 2 + 40 and sheet.shape[1] < 3 * 24 + 4 * 2 + 150
    top_margin = sheet[:10]
    assert (top_margin < 128).any()  # dark label text on the white margin


def test_cli_uses_the_latest_step_and_matches_direct_renders(cli_run):
    """The front video of the latest step (10, the shifted model) matches direct renders within compression."""
    latest = tiny_model(0, shift=0.3)
    other = tiny_model(0)
    video = video_utils.read_video(str(cli_run / "video_front.mp4")).astype(np.float32) / 255
    for i in range(T):
        expected = direct_render(latest, 0.0, i / T).image.permute(1, 2, 0).numpy()
        wrong = direct_render(other, 0.0, i / T).image.permute(1, 2, 0).numpy()
        assert np.abs(video[i] - expected).mean() < 0.03
        assert np.abs(video[i] - wrong).mean() > 2 * np.abs(video[i] - expected).mean()


def test_depth_and_alpha_videos_follow_the_object(cli_run):
    model = tiny_model(0, shift=0.3)
    alpha = video_utils.read_video(str(cli_run / "video_back_alpha.mp4")).astype(np.float32) / 255
    depth = video_utils.read_video(str(cli_run / "video_back_depth.mp4")).astype(np.float32) / 255
    truth = direct_render(model, 180.0, 0.0).alpha[0].numpy()
    assert np.abs(alpha[0, :, :, 0] - truth).mean() < 0.03
    empty = truth < 0.01
    assert np.abs(depth[0][empty] - 1.0).mean() < 0.05  # white background where nothing is drawn
    assert depth[0][truth > 0.9].std() > 0.02  # the object is shaded by depth, not flat


def test_streamed_videos_equal_the_in_memory_frames(cli_run):
    """write_videos (streaming) and render_tracks (in memory) give the same frames, every mode."""
    model = tiny_model(0, shift=0.3)
    names = ("back", "front_moving", "round")
    tracks = {name: cameras for name, cameras in visualize.video_tracks(T, CameraConfig(), SIZE).items()
              if name in names}
    frames = visualize.render_tracks(model, tracks, visualize.training_times(T), backend="torch",
                                     modes=["image", "depth", "alpha"], chunk=3, progress=False)
    for name in names:
        for mode, suffix in (("image", ""), ("depth", "_depth"), ("alpha", "_alpha")):
            video = video_utils.read_video(str(cli_run / f"video_{name}{suffix}.mp4")).astype(np.float32)
            assert np.abs(video - frames[name][mode]).mean() / 255 < 0.03, (name, mode)


def test_load_step_selects_an_older_model(workspace):
    out = workspace / "valid_step5"
    visualize.main(["--config", CONFIG, "save_path=run", f"outdir={workspace / 'logs'}", f"valid_dir={out}",
                    "device=cpu", "backend=torch", "num_frames=2", "resolution=16", "load_step=5", "sheet_times=0"])
    files = sorted(os.listdir(out / "run"))
    assert files == sorted(f"video_{name}.mp4" for name in TRACK_NAMES)
    video = video_utils.read_video(str(out / "run" / "video_back.mp4")).astype(np.float32) / 255
    expected = direct_render(tiny_model(0), 180.0, 0.5, size=16).image.permute(1, 2, 0).numpy()
    assert np.abs(video[1] - expected).mean() < 0.03


# ------------------------------------------------------------------------------------------------
# function API


def test_render_orbit_frames_equals_direct_renders():
    model = tiny_model(1)
    times = [0.0, 0.3, 0.55]
    cameras = visualize.orbit_track(-30.0, 2.0, len(times), CameraConfig(elevation=10.0), SIZE)
    frames = visualize.render_orbit_frames(model, cameras, times, backend="torch", chunk=2, progress=False)
    assert set(frames) == {"image"} and frames["image"].shape == (3, SIZE, SIZE, 3)
    for f, time in enumerate(times):
        expected = image_u8(direct_render(model, -30.0 + 2.0 * f, time, elevation=10.0))
        # One deformation call for a chunk of times vs one per time: float rounding only.
        assert np.abs(frames["image"][f].astype(int) - expected).max() <= 1


def test_video_tracks_follow_the_released_angles():
    num = 6
    tracks = visualize.video_tracks(num, CameraConfig(elevation=-15.0, radius=2.5, fovy=40.0), 16)
    assert list(tracks) == list(TRACK_NAMES)
    starts = {"front": (0.0, 0.0), "back": (180.0, 0.0), "front_moving": (-30.0, 2.0),
              "back_moving": (150.0, 2.0), "round": (0.0, 360.0 / num)}
    for name, (start, step) in starts.items():
        assert len(tracks[name]) == num
        for f, camera in enumerate(tracks[name]):
            expected = cam_utils.orbit_position(-15.0, start + f * step, 2.5)
            assert np.allclose(camera.camera_center.numpy(), expected, atol=1e-5), (name, f)
            assert (camera.width, camera.height, camera.fovy) == (16, 16, 40.0)


def test_times():
    assert visualize.training_times(4) == [0.0, 0.25, 0.5, 0.75]
    times = visualize.interpolated_times(4, 7)
    assert np.allclose(times, np.linspace(0.0, 0.75, 7))
    assert visualize.interpolated_times(4, 1) == [0.0]
    assert visualize.sheet_frame_indices(32, 4) == [0, 10, 21, 31]
    assert visualize.sheet_frame_indices(3, 4) == [0, 1, 2]


def test_interpolated_frames_change_smoothly_across_training_frames():
    """N interpolated times: every step moves a little, no step jumps, and training times match exactly."""
    model = tiny_model(0)
    steps_per_frame = 4
    times = visualize.interpolated_times(T, steps_per_frame * (T - 1) + 1)  # training frames at j = 0, 4, 8, 12
    cameras = visualize.orbit_track(0.0, 0.0, len(times), CameraConfig(), SIZE)
    frames = visualize.render_orbit_frames(model, cameras, times, backend="torch", progress=False)["image"]
    frames = frames.astype(np.float32)
    steps = np.array([np.abs(frames[j + 1] - frames[j]).mean() for j in range(len(times) - 1)])
    train = np.array([np.abs(frames[j + steps_per_frame] - frames[j]).mean()
                      for j in range(0, len(times) - 1, steps_per_frame)])
    assert steps.min() > 0.05  # never frozen (a snap to the nearest training frame would give 0)
    assert steps.max() < 0.5 * train.max()  # never a jump as large as one training frame
    for boundary in range(steps_per_frame, len(times) - 1, steps_per_frame):
        before, after = steps[boundary - 1], steps[boundary]
        assert max(before, after) < 2.0 * min(before, after), boundary
    for i in range(T):
        expected = image_u8(direct_render(model, 0.0, i / T))
        assert np.abs(frames[i * steps_per_frame] - expected).max() <= 1


def test_contact_sheet_tiles_are_the_renders():
    model = tiny_model(0)
    sheet = visualize.contact_sheet(model, T, [0.0, 120.0], 2, CameraConfig(), 20, backend="torch", progress=False)
    tiles = np.stack([np.stack([image_u8(direct_render(model, a, i / T, size=20)) for a in (0.0, 120.0)])
                      for i in (0, T - 1)])
    plain = video_utils.contact_sheet(tiles, gap=2)
    labelled = video_utils.contact_sheet(tiles, ["frame 0  t=0.00", "frame 3  t=0.75"], ["azimuth 0", "azimuth 120"])
    assert sheet.shape == labelled.shape
    top, left = sheet.shape[0] - plain.shape[0], sheet.shape[1] - plain.shape[1]
    assert top > 0 and left > 0
    assert np.abs(sheet[top:, left:].astype(int) - plain).max() <= 1



def test_contact_sheet_rows_at_interpolated_times():
    """With frames=N the rows are taken among the N rendered times, between training frames too."""
    model = tiny_model(0)
    sheet = visualize.contact_sheet(model, T, [0.0], 3, CameraConfig(), 20, backend="torch", progress=False,
                                    frames=2 * T)
    times = visualize.interpolated_times(T, 2 * T)
    picked = [times[j] for j in visualize.sheet_frame_indices(2 * T, 3)]
    assert any(abs(t * T - round(t * T)) > 0.1 for t in picked)  # a row between two training frames
    tiles = np.stack([np.stack([image_u8(direct_render(model, 0.0, t, size=20))]) for t in picked])
    plain = video_utils.contact_sheet(tiles, gap=2)
    top, left = sheet.shape[0] - plain.shape[0], sheet.shape[1] - plain.shape[1]
    assert np.abs(sheet[top:, left:].astype(int) - plain).max() <= 1

# ------------------------------------------------------------------------------------------------
# saved runs and options


def test_only_complete_saves_are_found(workspace):
    run = str(workspace / "logs" / "run")
    assert runs.saved_steps(run) == [5, 10]  # 7 and 12 were interrupted
    assert runs.find_saved_step(run) == (os.path.join(run, "10"), 10)
    assert runs.find_saved_step(run, 5) == (os.path.join(run, "5"), 5)
    with pytest.raises(UserError, match=r"saved steps: 5, 10") as err:
        runs.find_saved_step(run, 12)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"runs with a saved model in .*: run;") as err:
        runs.find_saved_step(str(workspace / "logs" / "nothing"))
    assert "\n" not in str(err.value)


def test_cli_missing_run_is_one_line(workspace, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["--config", CONFIG, "save_path=absent", f"outdir={workspace / 'logs'}", "device=cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no complete saved step") and "run" in err and len(err.splitlines()) == 1


def test_frame_count_sources(tmp_path):
    folder = tmp_path / "logs" / "r" / "3"
    folder.mkdir(parents=True)
    cfg = load_config(CONFIG, ["save_path=r"], require_path=False)
    with pytest.raises(UserError, match="num_frames=T"):
        frame_count(cfg, None, str(folder))
    dataset = tmp_path / "data"
    (dataset / "ref").mkdir(parents=True)
    for i in range(5):
        (dataset / "ref" / f"{i}_rgba.png").write_bytes(b"")
    trained = config_from_dict({"path": str(dataset)})
    assert frame_count(cfg, trained, str(folder)) == 5  # the run's dataset
    (folder / "frames").mkdir()
    for i in range(3):
        (folder / "frames" / f"{i}.ply").write_bytes(b"")
    assert frame_count(cfg, trained, str(folder)) == 3  # what the run exported
    trained.data.num_frames = 3
    assert frame_count(cfg, trained, str(folder)) == 3  # what the run was trained with (agrees with frames/)
    for ply in (folder / "frames").iterdir():
        ply.unlink()
    trained.data.num_frames = 2
    assert frame_count(cfg, trained, str(folder)) == 2  # the run's config wins over its dataset
    cfg.data.num_frames = 7
    assert frame_count(cfg, trained, str(folder)) == 7  # the command line wins


def test_options():
    config_items, opts = visualize.split_overrides(
        ["save_path=x", "frames=30", "background=[0.5,0.25,1]", "modes=depth", "elevation=-10"])
    assert config_items == ["save_path=x", "elevation=-10"]
    assert opts.frames == 30 and opts.background == [0.5, 0.25, 1.0] and opts.modes == ["depth"]
    assert visualize.parse_background("black") == (0.0, 0.0, 0.0)
    for bad in (["modes=[image,normal]"], ["background=grey"], ["background=[2,0,0]"], ["frames=0"],
                ["resolution=abc"], ["chunk=0"], ["frames"]):
        with pytest.raises(UserError) as err:
            visualize.split_overrides(bad)
        assert "\n" not in str(err.value)


def test_gui_opens_the_viewer_on_the_saved_model(workspace, monkeypatch):
    calls = []
    fake = types.ModuleType("viewer")
    fake.require_front_end = lambda settings: None
    fake.SavedModelSession = lambda model, backend, num_frames, data, folder: (model, num_frames, data)
    fake.run_viewer = lambda session, settings, camera, ref_size, fps: calls.append(session)
    monkeypatch.setattr(visualize, "viewer", fake)
    cfg, opts = visualize.load_settings(CONFIG, cli_args(workspace, "gui=web")[2:])
    assert visualize.run(cfg, opts, progress=False) == []
    (model, num_frames, data), = calls
    assert isinstance(model, GaussianModel4D) and not hasattr(model, "train_step")
    assert num_frames == T and data is None  # no dataset given: no reference overlay
    with torch.no_grad():  # the latest complete step (10): the shifted model
        assert torch.allclose(model.means, tiny_model(0, shift=0.3).means)


def test_viewer_reference_overlay_comes_from_the_dataset(tmp_path):
    for i in range(5):
        save_image(str(tmp_path / "ref" / f"{i}_rgba.png"), np.full((12, 12, 4), 40 * i, np.uint8))
    cfg = load_config(CONFIG, [f"path={tmp_path}", "ref_size=8"])
    data = visualize.reference_frames(cfg, 3)
    assert data.num_frames == 3 and tuple(data.ref_rgb.shape) == (3, 3, 8, 8)
    cfg.data.path = str(tmp_path / "elsewhere")
    assert visualize.reference_frames(cfg, 3) is None


def test_saved_run_config_warns_about_other_cameras(workspace, capsys):
    folder = workspace / "logs" / "run" / "5"
    (folder / "config.yaml").write_text(to_yaml(config_from_dict({"path": "x", "elevation": -10.0})))
    try:
        cfg, opts = visualize.load_settings(CONFIG, cli_args(workspace, "load_step=5", "sheet_times=0",
                                                             "modes=[alpha]", "frames=1",
                                                             f"valid_dir={workspace / 'valid_warn'}")[2:])
        visualize.run(cfg, opts, progress=False)
    finally:
        (folder / "config.yaml").unlink()
    assert "elevation=0.0 here but the run was trained with elevation=-10.0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# video_utils


def test_write_video_round_trip_and_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((5, 16, 24, 3), np.uint8)
    for f in range(5):  # flat colour blocks compress almost losslessly
        frames[f, :, : 8 + 2 * f] = rng.integers(0, 256, 3)
    path = tmp_path / "out" / "v.mp4"
    video_utils.write_video(str(path), frames, fps=10)
    decoded = video_utils.read_video(str(path))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 3
    odd = video_utils.read_video(_written(tmp_path / "odd.mp4", np.full((2, 15, 17, 3), 100, np.uint8)))
    assert odd.shape == (2, 16, 18, 3)  # padded by one row and one column


def _written(path, frames):
    video_utils.write_video(str(path), frames)
    return str(path)


def test_write_video_is_atomic(tmp_path):
    with pytest.raises(UserError, match=r"bad\.mp4: ffmpeg could not write the video \(.*nosuch") as err:
        video_utils.write_video(str(tmp_path / "bad.mp4"), np.zeros((2, 8, 8, 3), np.uint8), preset="nosuch")
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError):
        video_utils.write_video(str(tmp_path / "empty.mp4"), [])
    with pytest.raises(ValueError):
        video_utils.write_video(str(tmp_path / "float.mp4"), np.zeros((2, 8, 8, 3), np.float32))
    assert os.listdir(tmp_path) == []


def test_video_writer_streams_and_cleans_up(tmp_path):
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    frames[:, :, :8] = np.arange(6, dtype=np.uint8)[:, None, None, None] * 40
    with video_utils.VideoWriter(str(tmp_path / "s.mp4"), fps=5) as video:
        video.write(frames[:4])
        video.write(frames[4])  # one frame [H, W, 3]
        video.write(frames[5:])
        with pytest.raises(ValueError, match="frame size"):
            video.write(np.zeros((1, 8, 8, 3), np.uint8))
    assert video.num_frames == 6
    decoded = video_utils.read_video(str(tmp_path / "s.mp4"))
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 3
    with pytest.raises(RuntimeError, match="interrupted"):
        with video_utils.VideoWriter(str(tmp_path / "cut.mp4")) as video:
            video.write(frames)
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["s.mp4"]  # the interrupted video left nothing behind
    with pytest.raises(UserError, match="no frames"):
        with video_utils.VideoWriter(str(tmp_path / "none.mp4")):
            pass
    assert sorted(os.listdir(tmp_path)) == ["s.mp4"]


def test_depth_to_rgb_orders_near_to_bright():
    depth_values = np.array([[[1.0, 2.0, 3.0, 0.0]]], np.float32)  # [F=1, H=1, W=4]
    alpha = np.array([[[1.0, 1.0, 1.0, 0.0]]], np.float32)
    rgb = video_utils.depth_to_rgb(depth_values * alpha, alpha, (0.0, 0.0, 1.0))
    brightness = rgb[0, 0, :3].sum(-1)
    assert brightness[0] > brightness[1] > brightness[2]  # near is bright
    assert np.allclose(rgb[0, 0, 0], video_utils.colormap(np.array(1.0)))
    assert np.allclose(rgb[0, 0, 2], video_utils.colormap(np.array(0.0)))
    assert np.allclose(rgb[0, 0, 3], [0.0, 0.0, 1.0])  # background where alpha is 0
    faint = np.full((1, 1, 3), 0.3, np.float32)  # nothing solid: the drawn pixels set the range
    rgb = video_utils.depth_to_rgb(depth_values[:, :, :3] * faint, faint, (1.0, 1.0, 1.0))
    assert np.allclose(rgb[0, 0, 0], 0.3 * video_utils.colormap(np.array(1.0)) + 0.7, atol=1e-6)
