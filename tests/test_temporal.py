"""Smoothness in time (issue 22): the evaluation's trained / held-out split and temporal smoothness
figures, continuous time sampling, and the motion-smoothness loss."""
import math

import pytest
import torch
from test_trainer import tiny_config

from cam_utils import Camera
from stag4d.evaluation.evaluate import temporal_smoothness
from stag4d.rasterizer import GaussianParams
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
