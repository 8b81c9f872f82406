"""configs/released.yaml and the keys that reproduce the released code's behaviour, one by one."""
import os

import numpy as np
import pytest
import torch
from test_gen_mv import tiny_model  # noqa: F401  (fixture: a tiny random Zero123++ folder)
from test_guidance import tiny_model_dir  # noqa: F401  (fixture: a tiny random Zero123 folder)
from test_trainer import REPO, StubGuidance, make_disc_dataset, tiny_config
from PIL import Image

from guidance import GuidanceConfig, load_guidance
from guidance.schedule import timestep_window
from stag4d.config import load_config
from stag4d.data.frames import composite_and_resize, composite_and_resize_released, load_frames
from stag4d.errors import DataError
from stag4d.evaluation.visualize import video_tracks
from stag4d.gaussians.deformation import DeformationConfig, HexPlaneField
from stag4d.multiview import gen_mv
from stag4d.multiview.pipeline import composite_on_gray, load_pipeline
from stag4d.multiview.temporal_anchor import TemporalAnchor, released_blend_tokens
from stag4d.training.trainer import Trainer

RELEASED = os.path.join(REPO, "configs", "released.yaml")


def test_the_preset_sets_every_released_point():
    cfg = load_config(RELEASED, ["path=dataset/minions"])
    assert cfg.data.num_frames == 30 and cfg.data.resample == "released" and cfg.data.anchor_size == 512
    assert cfg.guidance.clip_preprocess == "processor" and cfg.guidance.timestep_rounding == "truncate"
    assert cfg.deformation.time_mapping == "released" and cfg.deformation.mirror_box
    assert not cfg.loss.anisotropy_activated and cfg.loss.regularize_coarse and not cfg.loss.reference_only_sds
    assert cfg.output.video_round_step == "integer" and not cfg.densify.screen_size_prune
    ours = load_config(os.path.join(REPO, "configs", "stag4d.yaml"), ["path=dataset/minions"])
    assert ours.data.resample == "antialias" and ours.deformation.time_mapping == "full"  # our defaults stay


def test_released_resampling_bleeds_the_colour_under_transparent_pixels():
    """Straight-alpha INTER_AREA (released) mixes the colour stored under transparent pixels into
    the edges; ours (premultiplied, antialiased) never sees it."""
    # 1600 px wide, the edge inside output pixel 400 of the 800 px step; a 25 px result samples it
    rgba = torch.zeros(64, 1600, 4)
    rgba[:, :801] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # opaque white on the left
    dark, bright = rgba.clone(), rgba.clone()
    dark[:, 801:, :3] = 0.0  # transparent, black underneath
    bright[:, 801:, :3] = 1.0  # transparent, white underneath
    pad = torch.zeros(1536, 1600, 4)  # make it square (the loaders' frames are)
    dark, bright = torch.cat([dark, pad]), torch.cat([bright, pad])
    ours_dark, _ = composite_and_resize(dark, 25)
    ours_bright, _ = composite_and_resize(bright, 25)
    assert torch.equal(ours_dark, ours_bright)
    released_dark, _ = composite_and_resize_released(dark, 25)
    released_bright, _ = composite_and_resize_released(bright, 25)
    assert float((released_bright - released_dark).max()) > 0.05  # the hidden colour shows at the edge


def test_missing_anchors_with_sds_stop_unless_reference_only(tmp_path):
    data = make_disc_dataset(tmp_path / "disc")
    os.rename(os.path.join(data, "zero123"), os.path.join(data, "zero123_gone"))
    with pytest.raises(DataError, match="gen_mv.py .*reference_only_sds=true"):
        Trainer(tiny_config(tmp_path, config="stag4d.yaml", data=data), guidance=StubGuidance())
    trainer = Trainer(tiny_config(tmp_path, config="stag4d.yaml", data=data, extra=["reference_only_sds=true"]),
                      guidance=StubGuidance())
    assert trainer.data.anchor_rgb is None
    trainer.close()


def test_coarse_regularizers_on_request(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=5", "regularize_coarse=true"]))
    assert "regularizer" in trainer.train_step()  # step 1, coarse
    trainer.close()


def test_truncated_timestep_window():
    ours, released = GuidanceConfig(), GuidanceConfig(timestep_rounding="truncate")
    # step 1: 0.5 - 0.48 / 3000 = 0.49984 -> 499.84: rounded 500, truncated 499 (likewise 949.85)
    assert timestep_window(1, ours) == (500, 950)
    assert timestep_window(1, released) == (499, 949)
    differing = sum(timestep_window(s, ours) != timestep_window(s, released) for s in range(3001))
    assert 2000 < differing < 3001  # most steps of the annealing differ by one timestep


def test_mirrored_box_samples_the_planes_at_minus_xyz():
    torch.manual_seed(0)
    plain = HexPlaneField(DeformationConfig(kplanes_features=2, kplanes_resolution=[6, 6, 6, 4], multires=[1]))
    mirrored = HexPlaneField(DeformationConfig(kplanes_features=2, kplanes_resolution=[6, 6, 6, 4], multires=[1],
                                               mirror_box=True))
    mirrored.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for planes in plain.time_planes:
            planes.uniform_(0.5, 1.5)
        mirrored.load_state_dict(plain.state_dict())
    xyz = torch.rand(50, 3) * 2 - 1
    times = torch.tensor([0.1, 0.7])
    torch.testing.assert_close(mirrored(xyz, times), plain(-xyz, times))
    assert not torch.allclose(mirrored(xyz, times), plain(xyz, times))


def test_integer_round_video_step():
    exact = video_tracks(7, load_config(None, ["path=x"]).camera, 8)["round"]
    integer = video_tracks(7, load_config(None, ["path=x"]).camera, 8, round_step="integer")["round"]
    first, second = (torch.linalg.inv(c.world_to_camera)[:3, 3] for c in integer[:2])
    angle = torch.rad2deg(torch.atan2(second[0], second[2]) - torch.atan2(first[0], first[2]))
    assert float(angle) == pytest.approx(51.0, abs=1e-3)  # 360 // 7
    first, second = (torch.linalg.inv(c.world_to_camera)[:3, 3] for c in exact[:2])
    assert float(torch.rad2deg(torch.atan2(second[0], second[2]) - torch.atan2(first[0], first[2]))) == \
        pytest.approx(360 / 7, abs=1e-3)


def test_released_anchor_blend_counts_tokens_by_channels():
    assert [released_blend_tokens(c) for c in (320, 640, 1280)] == [9600, 2400, 600]
    # the mid-block: 1280 channels, 150 own + 25 reference tokens, all under 600: all averaged
    torch.manual_seed(0)
    frame0, later = torch.randn(2, 175, 1280), torch.randn(2, 175, 1280)
    for blend, averaged in (("own", 150), ("released", 175)):
        anchor = TemporalAnchor("record", pin_memory=False, blend=blend)
        anchor("mid", 0, frame0.clone(), own_tokens=150)
        anchor.set_mode("replay")
        out = anchor("mid", 0, later.clone(), own_tokens=150)
        torch.testing.assert_close(out[:, :averaged], (frame0[:, :averaged].half().float() + later[:, :averaged]) / 2,
                                   atol=1e-3, rtol=0)
        torch.testing.assert_close(out[:, averaged:], later[:, averaged:])


def test_released_clip_preprocessing_goes_through_the_processor(tiny_model_dir):  # noqa: F811
    ours = load_guidance(GuidanceConfig(zero123_model=tiny_model_dir), "cpu")
    released = load_guidance(GuidanceConfig(zero123_model=tiny_model_dir, clip_preprocess="processor"), "cpu")
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    expected = released.feature_extractor(
        images=[Image.fromarray((im * 255).byte().permute(1, 2, 0).numpy()) for im in images],
        return_tensors="pt").pixel_values
    torch.testing.assert_close(released._clip_pixels(images), expected)
    difference = (ours._clip_pixels(images) - expected).abs()
    assert 0 < float(difference.mean()) < 0.1  # the two resamplers agree closely, not exactly


def test_gen_mv_released_flags(tmp_path):
    rgb = np.full((16, 16, 3), 40, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f.png")
    frame = gen_mv.read_frame(str(tmp_path / "f.png"), "color", matte_input=False)
    assert frame.shape == (16, 16, 4) and (frame[..., 3] == 255).all() and (frame[..., :3] == 40).all()
    args = gen_mv.parse_args(["--path", "x", "--released"])
    assert args.released and args.matte_input  # --released sets the three in main()


@pytest.mark.slow
def test_released_randomness_leaves_the_condition_unseeded(tiny_model):  # noqa: F811
    pipe = load_pipeline(tiny_model)
    image = composite_on_gray(np.random.default_rng(0).integers(0, 255, (32, 32, 4), dtype=np.uint8))
    kwargs = dict(steps=2, seed=1, width=32, height=48)
    torch.manual_seed(10)
    seeded_a = pipe(image, **kwargs)
    torch.manual_seed(11)
    seeded_b = pipe(image, **kwargs)
    assert np.array_equal(seeded_a, seeded_b)  # every draw from the seed
    torch.manual_seed(10)
    released_a = pipe(image, randomness="released", **kwargs)
    torch.manual_seed(10)
    released_a2 = pipe(image, randomness="released", **kwargs)
    torch.manual_seed(11)
    released_b = pipe(image, randomness="released", **kwargs)
    assert np.array_equal(released_a, released_a2) and not np.array_equal(released_a, released_b)


def test_released_loading_of_a_dataset(tmp_path):
    data = make_disc_dataset(tmp_path / "disc", num_frames=2, size=48, anchor_size=32)
    frames = load_frames(data, ref_size=32, anchor_size=24, resample="released")
    assert frames.ref_rgb.shape == (2, 3, 32, 32) and frames.anchor_rgb.shape == (2, 6, 3, 24, 24)
    plain = load_frames(data, ref_size=32, anchor_size=24)
    difference = (frames.ref_rgb - plain.ref_rgb).abs()
    assert 0 < float(difference.mean()) < 0.02  # the same images, resampled otherwise
