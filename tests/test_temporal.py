"""Smoothness in time (issue 22): the evaluation's trained / held-out split and temporal smoothness
figures, continuous time sampling, and the motion-smoothness loss."""
import dataclasses
import math

import pytest
import torch
from test_trainer import make_disc_dataset, tiny_config

from cam_utils import Camera
from stag4d.evaluation.evaluate import temporal_smoothness
from stag4d.rasterizer import GaussianParams, render
from stag4d.training.trainer import Trainer


class MovingBlob:
    """A stand-in model: a few Gaussians whose x position is ``motion(t)``."""

    def __init__(self, motion):
        self.motion = motion
        gen = torch.Generator().manual_seed(0)
        self.base = (torch.rand(30, 3, generator=gen) - 0.5) * 0.4

    device = torch.device("cpu")

    def gaussians_at_times(self, times):
        return [self.gaussians_at(float(t)) for t in times]

    def gaussians_at(self, t):
        means = self.base + torch.tensor([self.motion(t), 0.0, 0.0])
        n = means.shape[0]
        return GaussianParams(means=means, log_scales=torch.full((n, 3), math.log(0.05)),
                              quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), opacity_logits=torch.full((n,), 3.0),
                              colors=torch.tensor([[0.9, 0.2, 0.1]]).repeat(n, 1))


def test_smooth_motion_scores_smooth_and_flicker_does_not():
    camera = Camera.orbit(0.0, 0.0, size=48)
    still = temporal_smoothness(MovingBlob(lambda t: 0.0), camera, 8, backend="torch")
    steady = temporal_smoothness(MovingBlob(lambda t: 0.05 * t), camera, 8, backend="torch")
    # every in-between time (odd k of 2T) jumps away and back: what a frame the model never saw may do
    flicker = temporal_smoothness(MovingBlob(lambda t: 0.05 * t + (0.06 if round(t * 16) % 2 else 0.0)), camera, 8,
                                  backend="torch")
    assert still["midpoint_psnr"] == 100.0 and still["jitter"] == 0.0
    assert steady["midpoint_psnr"] > 40 and steady["jitter"] < 0.5
    assert flicker["midpoint_psnr"] < steady["midpoint_psnr"] - 10 and flicker["jitter"] > 1.5


def test_time_jitter_samples_between_frames_in_the_fine_stage(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=1", "time_jitter=0.5", "batch_size=8"]))
    coarse = trainer.sample_batch(1)
    assert coarse.times == [trainer.frame_time(f) for f in coarse.frames]
    fine = trainer.sample_batch(2)
    offsets = [t - trainer.frame_time(f) for t, f in zip(fine.times, fine.frames)]
    assert any(abs(o) > 1e-6 for o in offsets)
    assert all(abs(o) <= 0.5 / trainer.num_frames + 1e-9 for o in offsets)
    assert all(0.0 <= t <= 3 / 4 for t in fine.times)  # inside [0, (T - 1) / T]
    trainer.close()


def test_motion_smoothness_loss_is_zero_for_a_still_field_and_pulls_otherwise(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=0", "lambda_motion_smooth=100"]))
    assert float(trainer._motion_smoothness()) == pytest.approx(0.0, abs=1e-10)  # time planes start at 1: no motion
    with torch.no_grad():
        for planes in trainer.model.deformation.grid.time_planes:
            planes.uniform_(0.0, 2.0)  # a field that moves irregularly in time
    loss = trainer._motion_smoothness()
    assert float(loss) > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.deformation.grid.time_planes)
    result = trainer.train_step()
    assert "motion_smooth" in result and torch.isfinite(result["motion_smooth"])
    trainer.close()


def test_time_jitter_schedule_window_and_decay():
    from stag4d.training.trainer import TrainConfig

    # fine stage = steps 101..1100, so step 100 + 1000 p is the fraction p of it
    cfg = TrainConfig(time_jitter=0.5, init_steps=100, total_steps=1100, time_jitter_window=[0.2, 0.6],
                      time_jitter_decay="linear")
    at = {p: cfg.time_jitter_at(100 + round(1000 * p)) for p in (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 1.0)}
    assert at[0.0] == 0.0 and at[0.1] == 0.0  # coarse stage, then before the window
    assert at[0.2] == pytest.approx(0.5) and at[0.3] == pytest.approx(0.375) and at[0.4] == pytest.approx(0.25)
    assert at[0.6] == pytest.approx(0.0) and at[0.7] == 0.0 and at[1.0] == 0.0
    cfg.time_jitter_decay = "cosine"
    assert cfg.time_jitter_at(500) == pytest.approx(0.25) and cfg.time_jitter_at(400) == pytest.approx(0.5 * 0.8535534)
    cfg.time_jitter_decay, cfg.time_jitter_window = "none", [0.0, 1.0]  # the old behaviour: on over the whole fine stage
    assert cfg.time_jitter_at(100) == 0.0 and cfg.time_jitter_at(101) == 0.5 and cfg.time_jitter_at(1100) == 0.5


@pytest.mark.parametrize("extra, message", [
    (["time_jitter=0.8", "time_jitter_target=frame"], "time_jitter=0.8 needs time_jitter_target=interpolated"),
    (["time_jitter_window=[0.6,0.2]"], "time_jitter_window=[0.6, 0.2]: give [start, end]"),
    (["time_jitter_window=[0.5]"], "time_jitter_window=[0.5]: give [start, end]"),
    (["time_jitter_decay=exp"], "time_jitter_decay=exp is not one of none, linear, cosine"),
])
def test_bad_time_jitter_settings_are_one_line_errors(tmp_path, extra, message):
    from stag4d.settings import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        tiny_config(tmp_path, extra=extra)
    assert "\n" not in str(err.value)


def test_reference_view_keeps_the_frame_time_when_asked(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=1", "time_jitter=0.5", "batch_size=4",
                                                   "time_jitter_reference=false"]))
    with torch.no_grad():
        for planes in trainer.model.deformation.grid.time_planes:
            planes.uniform_(0.5, 1.5)  # a field that moves, so that the time shows in the renders
    batch = trainer.sample_batch(2)
    frame_times = [trainer.frame_time(f) for f in batch.frames]
    assert batch.ref_times == frame_times and batch.times != frame_times  # only the other views are jittered
    with torch.no_grad():
        gaussians = trainer.deform(batch)
        renders = trainer.render_views(gaussians, batch)
        at_frames = trainer.model.gaussians_at_times(frame_times)
    assert len(gaussians) == 8
    for out, g, t in zip(renders.reference, at_frames, frame_times):
        expected = render(g, trainer.ref_camera.with_time(t), torch.ones(3), backend="torch")
        assert torch.allclose(out.image, expected.image, atol=1e-6)
    # so the reference losses are those of the same frames without jitter, the anchor losses are not
    still = dataclasses.replace(batch, times=list(frame_times))
    with torch.no_grad():
        losses = trainer.compute_losses(batch, gaussians, renders)
        still_gaussians = trainer.deform(still)
        still_losses = trainer.compute_losses(still, still_gaussians, trainer.render_views(still_gaussians, still))
    assert torch.allclose(losses["ref_rgb"], still_losses["ref_rgb"]) and torch.allclose(
        losses["ref_alpha"], still_losses["ref_alpha"])
    assert not torch.allclose(losses["anchor_rgb"], still_losses["anchor_rgb"])
    # the anchors see the jittered times: their Gaussians are the first B of the list
    for b, _ in batch.anchors:
        assert torch.allclose(gaussians[b].means, trainer.model.gaussians_at_times([batch.times[b]])[0].means, atol=1e-6)
    trainer.close()
    # and with true (in every sample) the reference view is jittered with the rest
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=1", "time_jitter=0.5", "batch_size=4", "overwrite=true",
                                                   "time_jitter_reference=true", "time_jitter_reference_fraction=1"]))
    batch = trainer.sample_batch(2)
    assert batch.ref_times == batch.times and len(trainer.deform(batch)) == 4
    trainer.close()


def test_reference_jitter_fraction_jitters_that_share_of_the_samples(tmp_path):
    def draws(share: float, reference: bool = True):
        trainer = Trainer(tiny_config(tmp_path, extra=[
            "init_steps=1", "time_jitter=0.5", "batch_size=8", "overwrite=true",
            f"time_jitter_reference={str(reference).lower()}", f"time_jitter_reference_fraction={share}"]))
        batches = [trainer.sample_batch(step) for step in range(2, 52)]
        trainer.close()
        return trainer, batches

    trainer, batches = draws(0.25)
    jittered = kept = 0
    for batch in batches:
        for frame, time, ref_time in zip(batch.frames, batch.times, batch.ref_times):
            if time == trainer.frame_time(frame):
                continue  # clamped at the clip's first or last frame: nothing tells the two apart
            if ref_time == trainer.frame_time(frame):
                kept += 1
            else:
                assert ref_time == time  # a jittered reference shares its sample's time
                jittered += 1
    assert 0.15 < jittered / (jittered + kept) < 0.35  # 400 draws of p = 0.25
    # the extremes: none of them, or all of them
    _, none = draws(0.0)
    assert all(b.ref_times == [trainer.frame_time(f) for f in b.frames] for b in none)
    _, every = draws(1.0)
    assert all(b.ref_times == b.times for b in every)
    # at 1 nothing more is drawn: the samples' times are those of a run that draws no reference times at all
    _, unjittered = draws(1.0, reference=False)
    assert [b.times for b in every] == [b.times for b in unjittered]
    assert [b.times for b in batches] != [b.times for b in unjittered]  # a share < 1 draws, so this can fail


def test_reference_jitter_false_keeps_every_reference_whatever_the_fraction(tmp_path):
    # anchored.yaml sets a fraction; time_jitter_reference=false must still give back the anchor jitter alone
    trainer = Trainer(tiny_config(tmp_path, extra=["init_steps=1", "time_jitter=1", "time_jitter_target=interpolated",
                                                   "batch_size=8", "time_jitter_reference=false",
                                                   "time_jitter_reference_fraction=0.5"]))
    batches = [trainer.sample_batch(step) for step in range(2, 12)]
    assert all(b.ref_times == [trainer.frame_time(f) for f in b.frames] for b in batches)
    assert any(b.times != b.ref_times for b in batches)
    trainer.close()


def test_interpolated_targets_blend_the_trained_frames_either_side(tmp_path):
    data = make_disc_dataset(tmp_path / "disc6", num_frames=6)
    trainer = Trainer(tiny_config(tmp_path, data=data, extra=["holdout_frames=[3]", "time_jitter=1",
                                                               "time_jitter_target=interpolated"]))
    t = trainer.frame_time
    assert trainer.target_frames(2, t(2)) == (2, 2, 0.0)  # at a frame's own time: its image
    assert trainer.target_frames(1, t(1.25)) == pytest.approx((1, 2, 0.25))
    assert trainer.target_frames(2, t(2.5)) == pytest.approx((2, 4, 0.25))  # frame 3 is held out: 2 -> 4
    assert trainer.target_frames(4, t(3.5)) == pytest.approx((2, 4, 0.75))
    assert trainer.target_frames(5, t(5)) == (5, 5, 0.0)
    target = trainer._targets(trainer.data.ref_rgb, [trainer.target_frames(2, t(2.5))])[0]
    assert torch.allclose(target, 0.75 * trainer.data.ref_rgb[2] + 0.25 * trainer.data.ref_rgb[4])
    batch = trainer.sample_batch(trainer.cfg.train.init_steps + 1)  # a fine-stage step: times spread a full interval
    assert all(abs(tb - t(f)) <= 1 / 6 + 1e-9 for tb, f in zip(batch.times, batch.frames))
    trainer.close()
    # the frame's own image with the frame target, whatever the time
    trainer = Trainer(tiny_config(tmp_path, data=data, extra=["holdout_frames=[3]", "time_jitter=0.5", "overwrite=true",
                                                               "time_jitter_target=frame"]))
    assert trainer.target_frames(2, t(2.5)) == (2, 2, 0.0)
    trainer.close()
