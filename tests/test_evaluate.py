"""scripts/evaluate.py end to end on a tiny hand-built model and a dataset rendered from it."""
import json
import math
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from test_visualize import save_step

import cam_utils
from gs_renderer import GaussianModel4D
from stag4d.data.frames import load_image
from stag4d.errors import DataError, UserError
from stag4d.evaluation import evaluate as ev
from stag4d.files import save_image
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.rasterizer import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 3
REF_SIZE = 24
ANCHOR_SIZE = 16
# Two anchor rows (not the six of Zero123++) keep the test fast and exercise the configurable table.
ANCHORS = [[30.0, -30.0], [210.0, 20.0]]
EVAL_VIEWS = [{"name": "az060_el-15", "elevation": -15, "azimuth": 60},
              {"name": "az200_el10", "elevation": 10, "azimuth": 200}]


def _tiny_model(seed: int) -> GaussianModel4D:
    """About a hundred coloured, fairly opaque Gaussians and a tiny deformation field."""
    cfg = DeformationConfig(kplanes_features=4, kplanes_resolution=[4, 4, 4, 3], multires=[1], net_width=8)
    torch.manual_seed(seed)  # the deformation field's initialization
    model = GaussianModel4D(sh_degree=0, deformation=cfg)
    g = torch.Generator().manual_seed(seed)
    n = 120
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    sh_dc = (torch.rand(n, 1, 3, generator=g) - 0.5) * 3.0
    model.set_gaussians(means, sh_dc, torch.zeros(n, 0, 3), torch.full((n, 3), math.log(0.06)),
                        torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), torch.full((n,), 2.0))
    return model


def _rgba_of(model: GaussianModel4D, camera: cam_utils.Camera, time: float) -> np.ndarray:
    """uint8 straight-alpha RGBA of a render (on black = premultiplied colour)."""
    with torch.no_grad():
        out = render(model.gaussians_at(time), camera.with_time(time), torch.zeros(3), backend="torch")
    alpha = out.alpha.clamp(0, 1)
    straight = torch.where(alpha > 1e-6, out.image / alpha.clamp_min(1e-6), torch.zeros_like(out.image)).clamp(0, 1)
    rgba = torch.cat([straight, alpha]).permute(1, 2, 0).numpy()
    return np.round(rgba * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Dataset (ref/, zero123/, eval/) rendered from model A; logs/run/5 = A, logs/run/10 = A moved."""
    root = tmp_path_factory.mktemp("evaluate")
    model = _tiny_model(0)
    dataset = root / "dataset" / "tiny"
    for i in range(T):
        t = i / T
        save_image(str(dataset / "ref" / f"{i}_rgba.png"),
                   _rgba_of(model, cam_utils.reference_camera(0.0, size=REF_SIZE), t))
        for k, camera in enumerate(cam_utils.anchor_cameras(0.0, size=ANCHOR_SIZE, table=ANCHORS)):
            save_image(str(dataset / "zero123" / f"{i}_rgba" / f"{k}.png"), _rgba_of(model, camera, t))
        for view in EVAL_VIEWS:
            camera = cam_utils.Camera.orbit(view["elevation"], view["azimuth"], size=REF_SIZE)
            save_image(str(dataset / "eval" / view["name"] / f"{i}_rgba.png"), _rgba_of(model, camera, t))
    (dataset / "eval" / "views.json").write_text(json.dumps({"views": EVAL_VIEWS}))
    save_step(model, str(root / "logs" / "run" / "5"))
    moved = _tiny_model(0)
    with torch.no_grad():
        moved.means += torch.tensor([0.15, 0.0, 0.0])
    save_step(moved, str(root / "logs" / "run" / "10"))
    (root / "logs" / "run" / "7").mkdir()  # an interrupted save: no model files, must be ignored
    return root


def _args(root, *extra):
    return ["--config", os.path.join(REPO, "configs", "stag4d.yaml"), f"path={root / 'dataset' / 'tiny'}",
            "save_path=run", f"outdir={root / 'logs'}", f"valid_dir={root / 'valid'}", f"ref_size={REF_SIZE}",
            f"anchor_size={ANCHOR_SIZE}", f"anchor_views={ANCHORS}".replace(" ", ""), "device=cpu", "backend=torch", *extra]


@pytest.mark.slow
def test_evaluate_perfect_and_moved_model(workspace, capsys):
    ev.main(_args(workspace, "load_step=5"))
    printed = capsys.readouterr().out
    assert "reference" in printed and "anchors" in printed and "eval" in printed
    result = json.loads((workspace / "valid" / "run" / "metrics_5.json").read_text())
    assert result["step"] == 5 and result["frames"] == [0, 1, 2]
    assert set(result["groups"]) == {"reference", "anchors", "eval"}
    assert list(result["groups"]["eval"]["views"]) == [v["name"] for v in EVAL_VIEWS]
    assert list(result["groups"]["anchors"]["views"]) == ["anchor0", "anchor1"]
    for group in result["groups"].values():
        # Same model, same renderer: only 8-bit quantization separates render and ground truth.
        assert group["mean"]["psnr"] > 40
        assert group["mean"]["ssim"] > 0.99
        assert group["mean"]["iou"] > 0.97
        for view in group["views"].values():
            assert len(view["per_frame"]["psnr"]) == T

    # Default step = the latest complete one (10: the moved model), which scores lower.
    ev.main(_args(workspace, "views=reference", "frames=[0,2]"))
    moved = json.loads((workspace / "valid" / "run" / "metrics_10.json").read_text())
    assert list(moved["groups"]) == ["reference"] and moved["frames"] == [0, 2]
    assert moved["groups"]["reference"]["mean"]["psnr"] < 30
    assert moved["groups"]["reference"]["mean"]["iou"] < 0.95


@pytest.mark.slow
def test_render_views_writes_folders(workspace, tmp_path):
    views_file = tmp_path / "views.json"
    views_file.write_text(json.dumps({"views": [{"name": "eval_0", "elevation": 0, "azimuth": 0},
                                                {"name": "eval_1", "elevation": -15, "azimuth": 90}]}))
    out = tmp_path / "renders"
    ev.main(_args(workspace, "load_step=5", f"render_views={views_file}", f"out={out}", "size=20"))
    assert sorted(os.listdir(out)) == ["eval_0", "eval_1"]
    for name in ("eval_0", "eval_1"):
        assert sorted(os.listdir(out / name)) == [f"{i}.png" for i in range(T)]
        assert iio.imread(out / name / "0.png").shape == (20, 20, 3)
    # eval_0 is the reference camera: its render matches the reference frame (on white).
    ref_rgb, _ = load_image(str(workspace / "dataset" / "tiny" / "ref" / "1_rgba.png"), 20)
    rendered = torch.from_numpy(iio.imread(out / "eval_0" / "1.png")).permute(2, 0, 1).float() / 255
    assert (rendered - ref_rgb).abs().mean() < 0.03


def test_missing_model_and_step_errors(workspace, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.main(_args(workspace, "save_path=nothing"))
    assert exit_info.value.code == 2 and "no complete saved step under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ev.main(_args(workspace, "load_step=3"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "saved steps: 5, 10" in err and "\n" not in err


def test_option_parsing():
    config_items, opts = ev.split_overrides(["path=x", "views=eval", "metrics=[psnr,lpips]", "frames=[1,2]",
                                             "load_step=4", "elevation=-10"])
    assert config_items == ["path=x", "elevation=-10"]
    assert opts.views == "eval" and opts.metrics == ["psnr", "lpips"] and opts.frames == [1, 2]
    assert opts.load_step == 4
    with pytest.raises(UserError, match="choose from"):
        ev.split_overrides(["metrics=[psnr,bogus]"])
    with pytest.raises(UserError, match="go together"):
        ev.split_overrides(["render_views=v.json"])
    with pytest.raises(UserError, match="views=sideways"):
        ev.split_overrides(["views=sideways"])


def test_views_json_errors(tmp_path):
    bad = tmp_path / "views.json"
    bad.write_text(json.dumps({"views": [{"name": "a", "azimuth": 10}]}))
    with pytest.raises(DataError, match="not a views file"):
        ev.load_views_json(str(bad))
    with pytest.raises(DataError, match="not found"):
        ev.load_views_json(str(tmp_path / "missing.json"))


def test_held_out_frames_are_reported_apart(workspace, capsys):
    ev.main(_args(workspace, "load_step=5", "views=reference", "holdout_frames=[1]"))
    printed = capsys.readouterr().out
    result = json.loads((workspace / "valid" / "run" / "metrics_5.json").read_text())
    reference = result["groups"]["reference"]
    assert result["held_out_frames"] == [1]
    per_frame = reference["views"]["reference"]["per_frame"]["psnr"]
    assert reference["held_out_frames"]["psnr"] == pytest.approx(per_frame[1])
    assert reference["trained_frames"]["psnr"] == pytest.approx((per_frame[0] + per_frame[2]) / 2)
    assert " trained" in printed and " held-out" in printed and "temporal smoothness" in printed
    smooth = result["temporal_smoothness"]
    assert smooth["midpoint_psnr"] > 20 and 0 <= smooth["jitter"] < 2
