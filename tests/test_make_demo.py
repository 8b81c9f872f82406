import json
import os

import numpy as np
import pytest
import torch
from stag4d.data import make_demo

from stag4d.data.frames import load_frames


FRAMES, SIZE = 3, 48
SPACING = 0.04  # coarser than the default (4x fewer Gaussians) to keep the test fast


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    info = make_demo.make_demo(str(out), frames=FRAMES, size=SIZE, seed=0, spacing=SPACING, progress=False)
    return out, info


def test_layout_and_views_json(demo):
    out, info = demo
    anchor_size = info["anchor_size"]
    assert info["frames"] == FRAMES and info["ref_size"] == SIZE and anchor_size == 30
    assert 500 <= info["num_gaussians"] <= 1200
    assert sorted(os.listdir(out / "ref")) == [f"{i}_rgba.png" for i in range(FRAMES)]
    assert sorted(os.listdir(out / "zero123")) == [f"{i}_rgba" for i in range(FRAMES)]
    for i in range(FRAMES):
        assert sorted(os.listdir(out / "zero123" / f"{i}_rgba")) == [f"{k}.png" for k in range(6)]
    views = json.loads((out / "eval" / "views.json").read_text())["views"]
    assert [v["name"] for v in views] == ["az060_el-15", "az180_el0", "az300_el15", "az240_el-30"]
    for view in views:
        assert set(view) == {"name", "elevation", "azimuth"}
        files = sorted(os.listdir(out / "eval" / view["name"]))
        assert files == [f"{i}_rgba.png" for i in range(FRAMES)]
    leftovers = [name for _, _, names in os.walk(out) for name in names if ".tmp" in name]
    assert leftovers == []  # atomic writes cleaned up


def test_load_frames_reads_it_back(demo):
    out, info = demo
    data = load_frames(str(out), ref_size=SIZE, anchor_size=info["anchor_size"])
    assert data.frame_ids == list(range(FRAMES))
    assert data.ref_rgb.shape == (FRAMES, 3, SIZE, SIZE)
    assert data.anchor_rgb.shape == (FRAMES, 6, 3, 30, 30)
    # The object is in the middle of every view, the corners are background.
    for mask in (data.ref_mask, data.anchor_mask.flatten(0, 1)):
        assert mask[..., 0, 0].max() == 0
        assert 0.05 < mask.mean() < 0.6
        centre = mask[..., mask.shape[-1] // 2 - 2 : mask.shape[-1] // 2 + 2, mask.shape[-1] // 2 - 2 : mask.shape[-1] // 2 + 2]
        assert centre.flatten(1).amax(1).min() > 0.9
    # It moves: consecutive frames differ, but modestly.
    change = (data.ref_rgb[1] - data.ref_rgb[0]).abs().mean()
    assert 1e-3 < change < 0.1


def test_png_matches_the_render_on_white(demo):
    from stag4d.rasterizer import render

    out, _ = demo
    data = load_frames(str(out), ref_size=SIZE, anchor_size=30, require_anchors=False)
    creature = make_demo.make_creature(0, SPACING)
    t = 1 / FRAMES
    params = make_demo.to_gaussian_params(make_demo.creature_gaussians(creature, t))
    from cam_utils import reference_camera

    with torch.no_grad():
        rendered = render(params, reference_camera(size=SIZE, time=t), torch.ones(3), backend="torch")
    torch.testing.assert_close(data.ref_rgb[1], rendered.image.clamp(0, 1), atol=2.5 / 255, rtol=0)
    torch.testing.assert_close(data.ref_mask[1], rendered.alpha.clamp(0, 1), atol=0.6 / 255, rtol=0)


def test_deterministic_given_the_seed(demo, tmp_path):
    out, _ = demo
    # Same seed: byte-identical files. (One frame to save time: t = 0 for frame 0 either way.)
    make_demo.make_demo(str(tmp_path / "same"), frames=1, size=SIZE, seed=0, spacing=SPACING, progress=False)
    compared = 0
    for folder, _, names in os.walk(tmp_path / "same"):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), tmp_path / "same")
            if name == "demo.json":
                continue  # records the frame count
            assert (tmp_path / "same" / relative).read_bytes() == (out / relative).read_bytes(), relative
            compared += 1
    assert compared == 1 + 6 + 4 + 1  # ref, anchors, eval views, views.json

    other = make_demo.creature_gaussians(make_demo.make_creature(1), 0.0)["means"]
    same = make_demo.creature_gaussians(make_demo.make_creature(0), 0.0)["means"]
    assert other.shape == same.shape and not np.allclose(other, same)


def test_creature_fits_and_moves():
    creature = make_demo.make_creature(0)
    assert 2000 <= len(creature_points(creature, 0.0)) <= 6000  # "a few thousand" at the default spacing
    radii = [np.linalg.norm(make_demo.creature_gaussians(creature, i / 8)["means"], axis=1).max() for i in range(8)]
    assert max(radii) < 0.6
    start, quarter = (make_demo.creature_gaussians(creature, t)["means"] for t in (0.0, 0.25))
    moved = np.linalg.norm(quarter - start, axis=1)
    assert 0.01 < moved.mean() < 0.1 and moved.max() < 0.35
    looped = make_demo.creature_gaussians(creature, 1.0)["means"]
    np.testing.assert_allclose(looped, start, atol=1e-9)  # one cycle over the clip


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        make_demo.main(["--out", str(tmp_path / "x"), "--frames", "0"])
    assert excinfo.value.code == 2
    assert "--frames 0" in capsys.readouterr().err


def creature_points(creature, t):
    return make_demo.creature_gaussians(creature, t)["means"]


def test_the_fast_variant_moves_more_and_less_regularly():
    creature = make_demo.make_creature(0)
    fast = make_demo.Motion(cycles=2.5, amplitude=1.6, wobble=0.8)

    def step(motion, t, dt=1 / 16):
        a = make_demo.creature_gaussians(creature, t, motion)["means"]
        b = make_demo.creature_gaussians(creature, t + dt, motion)["means"]
        return np.linalg.norm(b - a, axis=1).mean()

    slow_steps = [step(make_demo.Motion(), i / 16) for i in range(16)]
    fast_steps = [step(fast, i / 16) for i in range(16)]
    assert np.mean(fast_steps) > 3 * np.mean(slow_steps)  # much faster per frame
    assert np.std(fast_steps) / np.mean(fast_steps) > 1.5 * np.std(slow_steps) / np.mean(slow_steps)  # less regular
    end = make_demo.creature_gaussians(creature, 1.0, fast)["means"]
    assert not np.allclose(end, make_demo.creature_gaussians(creature, 0.0, fast)["means"], atol=1e-3)  # no loop
