"""Trainer on a tiny synthetic dataset (CPU, seeded): end-to-end outputs, SDS wiring with a stub
guidance, the missing-model error, and held-out views/frames never reaching the losses."""
import math
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import cam_utils
from gs_renderer import GaussianModel4D
from guidance.conditioning import anchor_for_azimuth
from stag4d.config import load_config
from stag4d.errors import ModelUnavailable, UserError
from stag4d.training import cli, runs
from stag4d.training import trainer as trainer_module
from stag4d.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPHERE_RADIUS = 0.35


# ---------------------------------------------------------------------------------------------
# tiny synthetic data: a sphere at the origin whose colour changes with time. Seen from any
# orbit camera at radius 2 it is the same centred disc, so reference and anchors are consistent.


def disc_image(size: int, frame: int, num_frames: int, fovy: float = cam_utils.DEFAULT_FOVY) -> np.ndarray:
    """RGBA uint8 [size, size, 4]: the sphere's silhouette, colour from red (t=0) to blue."""
    focal = cam_utils.fov_to_focal(fovy, size)
    radius_px = focal * math.tan(math.asin(SPHERE_RADIUS / cam_utils.DEFAULT_RADIUS))
    v, u = np.mgrid[0:size, 0:size] + 0.5
    dist = np.hypot(u - size / 2, v - size / 2)
    alpha = np.clip(radius_px + 0.5 - dist, 0.0, 1.0)
    t = frame / max(1, num_frames - 1)
    colour = np.array([1.0 - t, 0.3, t])
    rgba = np.concatenate([np.broadcast_to(colour, (size, size, 3)), alpha[..., None]], axis=-1)
    return (rgba * 255).round().astype(np.uint8)


def make_disc_dataset(root, num_frames: int = 4, size: int = 48, anchor_size: int = 32, views: int = 6) -> str:
    root = str(root)
    os.makedirs(os.path.join(root, "ref"), exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(disc_image(size, i, num_frames)).save(os.path.join(root, "ref", f"{i}_rgba.png"))
        folder = os.path.join(root, "zero123", f"{i}_rgba")
        os.makedirs(folder, exist_ok=True)
        for k in range(views):
            Image.fromarray(disc_image(anchor_size, i, num_frames)).save(os.path.join(folder, f"{k}.png"))
    return root


TINY = [
    "device=cpu", "backend=torch", "num_pts=256", "ref_size=32", "anchor_size=32", "batch_size=2",
    "render_res_sizes=[32,32,32]", "kplanes_resolution=[8,8,8,4]", "multires=[1,2]", "kplanes_features=8",
    "net_width=16", "iters=20", "init_steps=3", "log_interval=5", "valid_interval=0", "save_step=0",
    "density_start_iter=1000", "video_fps=4",
]


def tiny_config(tmp_path, config="anchored.yaml", extra=(), data=None):
    data = data or make_disc_dataset(tmp_path / "disc")
    overrides = TINY + [f"path={data}", "save_path=disc", f"outdir={tmp_path / 'logs'}",
                        f"valid_dir={tmp_path / 'valid'}"] + list(extra)
    return load_config(os.path.join(REPO, "configs", config), overrides)


class StubGuidance:
    """Implements the Guidance protocol without a diffusion model; records every call.

    Its loss pulls the render towards grey, weighted by fresh torch noise (so it reads torch's RNG
    like the real SDS does).
    """

    def __init__(self):
        self.prepared = None
        self.calls = []

    def prepare(self, ref_rgb, anchor_rgb=None):
        self.prepared = (ref_rgb.clone(), None if anchor_rgb is None else anchor_rgb.clone())

    def sds_loss(self, images, frame_idx, cond_view, d_elevation, d_azimuth, d_radius, step):
        self.calls.append(dict(images=images.detach().clone(), frame_idx=frame_idx.tolist(),
                               cond_view=cond_view.tolist(), d_elevation=d_elevation.tolist(),
                               d_azimuth=d_azimuth.tolist(), d_radius=d_radius.tolist(), step=step))
        weight = torch.rand(images.shape[0], 1, 1, 1, device=images.device)
        return 100.0 * (weight * (images - 0.5).square()).flatten(1).mean(1).sum()


def reference_mse(trainer) -> float:
    """Mean over training frames of the reference-view MSE (rgb) of the deformed model."""
    errors = []
    for i in trainer.train_frames:
        out = trainer.render(trainer.ref_camera, trainer.frame_time(i))
        errors.append(float((out.image - trainer.data.ref_rgb[i]).square().mean()))
    return float(np.mean(errors))


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_anchored_run_learns_and_writes_outputs(tmp_path):
    cfg = tiny_config(tmp_path, extra=["total_steps=24", "save_step=12", "valid_interval=12"])
    trainer = Trainer(cfg)
    assert trainer.guidance is None  # anchored: no diffusion model
    before = reference_mse(trainer)
    trainer.train()
    after = reference_mse(trainer)
    assert trainer.step == 24
    assert after < 0.5 * before, (before, after)

    for step in (12, 24):
        folder = tmp_path / "logs" / "disc" / str(step)
        for name in ("model.ply", "deformation.pt", "checkpoint.pt", "config.yaml"):
            assert (folder / name).is_file(), folder / name
        assert sorted(os.listdir(folder / "frames")) == [f"{i}.ply" for i in range(4)]
        for view in ("front", "back"):
            valid = tmp_path / "valid" / "disc" / f"{step}_{view}"
            assert sorted(os.listdir(valid)) == ["00.jpg", "01.jpg", "02.jpg", "03.jpg", "video.mp4"]
            assert (valid / "video.mp4").stat().st_size > 0
    assert (tmp_path / "logs" / "disc" / "losses.csv").is_file()
    # no temporary files left behind by the atomic writes
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if ".tmp" in f]
    assert leftovers == []
    saved = load_config(str(tmp_path / "logs" / "disc" / "24" / "config.yaml"))
    assert saved == cfg

    loaded = GaussianModel4D.load(str(tmp_path / "logs" / "disc" / "24"))
    assert loaded.num == trainer.model.num


def test_train_step_returns_detached_losses_and_counts(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=1"]))
    first = trainer.train_step()  # coarse
    second = trainer.train_step()  # fine
    assert trainer.step == 2 and first["step"] == 1 and second["step"] == 2
    assert "regularizer" not in first and "regularizer" in second  # HexPlane regularizers: fine stage only
    for key in ("loss", "ref_rgb", "ref_alpha", "anchor_rgb", "anchor_alpha", "anisotropy"):
        assert isinstance(second[key], torch.Tensor) and not second[key].requires_grad
        assert torch.isfinite(second[key])
    assert second["num_gaussians"] == trainer.model.num == 256
    assert "sds" not in second
    assert trainer.last_step_time > 0


def test_coarse_stage_uses_canonical_gaussians_and_the_middle_frame(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=2"]))
    seen_times = []
    original = trainer.model.gaussian_batch_at_times

    def spy(times, *args, **kwargs):
        seen_times.append(torch.as_tensor(times).tolist())
        return original(times, *args, **kwargs)

    monkeypatch.setattr(trainer.model, "gaussian_batch_at_times", spy)
    frames = []
    monkeypatch.setattr(trainer, "sample_batch", _recording(trainer.sample_batch, frames))
    trainer.train_step()
    trainer.train_step()
    assert seen_times == []  # no deformation in the coarse stage
    assert frames == [[2, 2], [2, 2]]  # T // 2 of 4 frames
    trainer.train_step()
    assert len(seen_times) == 1 and all(t in (0.0, 0.25, 0.5, 0.75) for t in seen_times[0])


def _recording(function, log):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        log.append(list(result.frames))
        return result

    return wrapper


def test_sds_path_with_stub_guidance(tmp_path, capsys):
    stub = StubGuidance()
    cfg = tiny_config(tmp_path, config="stag4d.yaml",
                      extra=["lambda_ref_rgb=0", "lambda_ref_alpha=0", "lambda_tv=0", "lambda_anisotropy=0",
                             "render_res_sizes=[16,24,32]", "render_res_ratios=[0.3,0.6]", "iters=10",
                             "batch_size=4", "init_steps=0"])
    trainer = Trainer(cfg, guidance=stub)
    assert stub.prepared is not None
    assert re.search(r"embedded the reference and anchor images for the guidance in [0-9.]+ s", capsys.readouterr().err)
    assert stub.prepared[0].shape == (4, 3, 32, 32) and stub.prepared[1].shape == (4, 6, 3, 32, 32)

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    for _ in range(10):
        result = trainer.train_step()
        assert set(k for k in result if k not in ("loss", "num_gaussians", "step")) == {"sds"}
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    # the SDS gradient reaches the render, hence the Gaussians and the deformation field
    assert {"means", "sh_dc", "log_scales", "opacity_logits"} <= set(changed)
    assert any(n.startswith("deformation.") for n in changed)

    # resolution schedule: 16 while step_ratio < 0.3, 24 while < 0.6, then 32
    sizes = [call["images"].shape[-1] for call in stub.calls]
    assert sizes == [16, 16, 24, 24, 24, 32, 32, 32, 32, 32]
    assert [call["step"] for call in stub.calls] == list(range(1, 11))
    # conditioning: the reference for |azimuth| < 30; an anchor only with its sector's relative pose
    views = [v for call in stub.calls for v in call["cond_view"]]
    assert any(v >= 0 for v in views) and -1 in views
    table = cam_utils.anchor_table(None)
    for call in stub.calls:
        for view, d_elevation, d_azimuth in zip(call["cond_view"], call["d_elevation"], call["d_azimuth"]):
            if view >= 0:
                assert -30 <= d_azimuth < 30  # relative to the anchor, the short way round
                azimuth = d_azimuth + table[view][0]
                assert anchor_for_azimuth(azimuth, 6) == view
                assert abs(azimuth - round(azimuth)) < 1e-4  # integer azimuths, SPEC 4.2
            assert -30 <= d_elevation + (table[view][1] if view >= 0 else 0) < 30
        assert call["d_radius"] == [0.0] * 4
        assert all(f in range(4) for f in call["frame_idx"])
    # backgrounds: white and black both occur (invert_bg_prob 0.5): corner pixels of the renders
    corners = torch.cat([call["images"][:, :, 0, 0] for call in stub.calls])
    assert (corners > 0.99).all(dim=1).any() and (corners < 0.01).all(dim=1).any()


@pytest.mark.parametrize("hub_id", [False, True])
def test_missing_zero123_model_stops_before_training(tmp_path, monkeypatch, capsys, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = make_disc_dataset(tmp_path / "disc")
    missing = "nobody/no-such-zero123" if hub_id else tmp_path / "no_such_model"
    argv = ["--config", os.path.join(REPO, "configs", "stag4d.yaml"), *TINY, f"path={data}",
            f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}", f"zero123_model={missing}"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    # the libraries' own retry and deprecation messages are silenced: stderr is our line about the
    # data (read before the model loads), then the one error line
    assert re.fullmatch(r"read 4 frames and their anchors in [0-9.]+ s\nerror: [^\n]+\n", err), err
    assert "zero123_model=" in err and "anchored.yaml" in err and str(missing) in err
    assert not (tmp_path / "logs" / "disc").exists()  # nothing trained, nothing saved, nothing left behind


def test_missing_model_error_is_raised_by_the_trainer(tmp_path, monkeypatch):
    def unavailable(cfg, device):
        raise ModelUnavailable(f"{cfg.zero123_model} not found")

    monkeypatch.setattr(trainer_module, "load_guidance", unavailable)
    with pytest.raises(ModelUnavailable, match=r"needs Zero123: .* not found; point zero123_model= at a local diffusers folder.*anchored\.yaml"):
        Trainer(tiny_config(tmp_path, config="stag4d.yaml"))


def test_held_out_views_and_frames_are_never_used(tmp_path):
    stub = StubGuidance()
    cfg = tiny_config(tmp_path, config="anchored.yaml",
                      extra=["holdout_views=[1,3]", "holdout_frames=[1]", "lambda_zero123=1", "init_steps=1",
                             "anchors_per_sample=2", "batch_size=2"])
    trainer = Trainer(cfg, guidance=stub)
    # the guidance never sees the held-out data: blank (white) in what it was given
    ref, anchors = stub.prepared
    assert torch.all(ref[1] == 1) and torch.all(anchors[1] == 1) and torch.all(anchors[:, [1, 3]] == 1)
    assert not torch.all(ref[0] == 1) and not torch.all(anchors[0, 0] == 1)
    # spy: poison the held-out data; any use makes a loss NaN
    data = trainer.data
    data.ref_rgb[1] = float("nan")
    data.ref_mask[1] = float("nan")
    data.anchor_rgb[1] = float("nan")
    data.anchor_mask[1] = float("nan")
    data.anchor_rgb[:, [1, 3]] = float("nan")
    data.anchor_mask[:, [1, 3]] = float("nan")
    for _ in range(6):
        result = trainer.train_step()
        assert all(torch.isfinite(v) for v in result.values() if isinstance(v, torch.Tensor)), result
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    frames = {f for call in stub.calls for f in call["frame_idx"]}
    views = {v for call in stub.calls for v in call["cond_view"]}
    assert 1 not in frames and frames == {0, 2, 3}
    assert not views & {1, 3} and views & {0, 2, 4, 5}  # anchors do condition, but never held-out ones


def test_held_out_middle_frame_falls_back_to_the_nearest(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["holdout_frames=[2]"]))
    assert trainer.middle_frame == 1 and trainer.train_frames == [0, 1, 3]


def test_bad_holdout_frame_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"holdout_frames=\[9\]: the data has frames 0..3"):
        Trainer(tiny_config(tmp_path, extra=["holdout_frames=[9]"]))


def test_render_for_the_viewer(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    camera = cam_utils.Camera.orbit(0.0, 45.0, size=24)
    out = trainer.render(camera, time=0.5, background=(0, 0, 0))
    assert out.image.shape == (3, 24, 24) and out.alpha.shape == (1, 24, 24)
    assert not out.image.requires_grad
    canonical = trainer.render(camera, None, scale_modifier=0.5)
    assert canonical.image.shape == (3, 24, 24)
    # the background shows through where alpha < 1: white - black = 1 - alpha
    white = trainer.render(camera, 0.5, background=(1, 1, 1))
    assert torch.allclose(white.image - out.image, (1 - out.alpha).expand(3, -1, -1), atol=1e-5)
    assert (out.alpha < 0.99).any()


def test_trainer_module_is_headless():
    code = ("import sys, stag4d.training.trainer; bad = [m for m in ('dearpygui', 'diffusers', 'transformers', 'rembg') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("gui, front_end", [("True", "dearpygui"), ("dearpygui", "dearpygui"), ("web", "web")])
def test_gui_hands_the_trainer_to_the_viewer(tmp_path, monkeypatch, gui, front_end):
    calls, checked = [], []
    fake = types.ModuleType("viewer")
    fake.require_front_end = lambda settings: checked.append(settings.gui)
    fake.TrainingSession = lambda trainer: ("session", trainer)
    fake.run_viewer = lambda session, settings, camera, ref_size, fps: calls.append((session, settings, fps))
    monkeypatch.setattr(cli, "viewer", fake)
    data = make_disc_dataset(tmp_path / "disc")
    cli.main(["--config", os.path.join(REPO, "configs", "anchored.yaml"), *TINY, f"path={data}", f"gui={gui}",
              f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}"])
    assert len(calls) == 1 and checked == [front_end]
    (_, trainer), settings, fps = calls[0]
    assert isinstance(trainer, Trainer) and trainer.step == 0 and settings.gui == front_end
    assert fps == trainer.cfg.output.video_fps
    assert runs.saved_steps(str(tmp_path / "logs" / "disc")) == []  # the viewer drives training, main does not


@pytest.mark.slow
def test_demo_config_runs_on_the_committed_demo_data(tmp_path, capsys):
    demo = os.path.join(REPO, "dataset", "demo")
    if not os.path.isdir(os.path.join(demo, "ref")):
        pytest.skip("dataset/demo is not here")
    cli.main(["--config", os.path.join(REPO, "configs", "demo.yaml"), "total_steps=3", "valid_interval=3",
               "num_pts=500", "ref_size=48", "anchor_size=48", f"outdir={tmp_path / 'logs'}",
               f"valid_dir={tmp_path / 'valid'}"])
    captured = capsys.readouterr()
    assert "saved" in captured.out
    # where the run's time went, for benchmarks/bench_pipeline.sh's logs: data, then steps, then the writes
    assert re.search(r"read 16 frames and their anchors in [0-9.]+ s\n", captured.err)
    assert re.search(r"demo: steps 1 to 3 in [0-9.]+ s \([0-9.]+ ms/step with saves and validations\), then "
                     r"[0-9.]+ s for the writes in flight and the last save", captured.err)
    assert (tmp_path / "logs" / "demo" / "3" / "checkpoint.pt").is_file()
    assert len(os.listdir(tmp_path / "logs" / "demo" / "3" / "frames")) == 16
    assert (tmp_path / "valid" / "demo" / "3_front" / "video.mp4").is_file()
