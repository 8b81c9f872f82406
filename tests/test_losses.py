"""Regularizers, anisotropy loss and the photometric term on hand-made inputs."""

import pytest
import torch

from stag4d.gaussians.deformation import DeformationConfig, DeformationField
from stag4d.training.losses import (LossConfig, anisotropy_loss, hexplane_regularizers, per_sample_mse,
                                   second_difference_smoothness, total_regularizer)

T, R, C = 6, 4, 2


def _f(x):
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def field_with(spatial_fn, time_fn, scales=(1, 2)):
    """A small field whose planes are filled by fn(row index [H, 1], column index [1, W]) -> [H, W]."""
    field = DeformationField(DeformationConfig(kplanes_features=C, kplanes_resolution=[R, R, R, T], multires=list(scales)))
    with torch.no_grad():
        for planes in field.grid.spatial_planes:
            h, w = planes.shape[-2:]
            planes.copy_(spatial_fn(torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]).expand_as(planes))
        for planes in field.grid.time_planes:
            h, w = planes.shape[-2:]
            planes.copy_(time_fn(torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]).expand_as(planes))
    return field


def test_second_difference_of_quadratic_and_linear():
    rows = torch.arange(7.0)
    quadratic = (3.0 * rows**2).view(1, 1, 7, 1).expand(2, 3, 7, 5)  # second difference 6 everywhere
    assert torch.allclose(second_difference_smoothness(quadratic), torch.full((2,), 36.0))
    linear = (2.0 * rows - 1).view(1, 1, 7, 1).expand(1, 1, 7, 5)
    assert torch.allclose(second_difference_smoothness(linear), torch.zeros(1))
    # only the row axis counts: a quadratic along columns gives 0
    cols = (torch.arange(5.0) ** 2).view(1, 1, 1, 5).expand(1, 1, 7, 5)
    assert torch.allclose(second_difference_smoothness(cols), torch.zeros(1))


def test_regularizers_linear_in_t_and_constant_one():
    # planes linear in their row axis: zero second difference; time planes all 1: zero L1
    field = field_with(lambda r, c: 0.2 + 0.01 * r + 0.0 * c, lambda r, c: 1.0 + 0.0 * (r + c))
    reg = hexplane_regularizers(field)
    assert _f(reg["time_smooth"]) == pytest.approx(0.0, abs=1e-10)
    assert _f(reg["plane_tv"]) == pytest.approx(0.0, abs=1e-10)
    assert _f(reg["l1_time"]) == pytest.approx(0.0, abs=1e-10)


def test_regularizers_known_values():
    # time planes: 1 + 0.5 t^2 in the row (t) axis -> second difference 1 -> mean square 1 per plane;
    # 3 planes x 2 scales = 6. |1 - plane| = 0.5 t^2, mean over rows 0..5 = 0.5 * 55 / 6 per plane.
    # spatial planes: quadratic 0.1 r^2 along rows (res_b) -> second difference 0.2 -> 0.04 per plane;
    # a column-only variation adds nothing.
    field = field_with(lambda r, c: 0.1 * r**2 + c, lambda r, c: 1.0 + 0.5 * r**2 + 0.0 * c)
    reg = hexplane_regularizers(field)
    assert _f(reg["time_smooth"]) == pytest.approx(6.0, rel=1e-5)
    assert _f(reg["plane_tv"]) == pytest.approx(6 * 0.04, rel=1e-4)
    assert _f(reg["l1_time"]) == pytest.approx(6 * 0.5 * 55 / 6, rel=1e-5)
    total = total_regularizer(reg, LossConfig(lambda_tv=2.0))
    expected = 2.0 * (5 * 6.0 + 0.05 * 0.24 + 0.05 * 27.5)
    assert _f(total) == pytest.approx(expected, rel=1e-4)
    assert _f(total_regularizer(reg, LossConfig())) == pytest.approx(expected / 2, rel=1e-4)


def test_regularizers_of_fresh_field_and_gradient():
    field = DeformationField(DeformationConfig(kplanes_features=C, kplanes_resolution=[8, 8, 8, T], multires=[1]))
    reg = hexplane_regularizers(field)
    assert _f(reg["time_smooth"]) == 0.0 and _f(reg["l1_time"]) == 0.0
    assert _f(reg["plane_tv"]) > 0.0  # random spatial planes are not smooth
    total_regularizer(reg, LossConfig()).backward()
    assert field.grid.spatial_planes[0].grad.abs().sum() > 0


def test_anisotropy_loss_by_hand():
    scales = torch.tensor([[1.0, 1.0, 1.0], [10.0, 1.0, 1.0], [0.2, 0.01, 0.1]])
    loss = anisotropy_loss(torch.log(scales), ratio=7.5)
    quotients = torch.tensor([1.0 / (1.0 + 1e-8), 10.0 / (1.0 + 1e-8), 0.2 / (0.01 + 1e-8)])
    expected = (torch.clamp_min(quotients, 7.5).mean() - 7.5) * 3
    assert _f(loss) == pytest.approx(_f(expected), rel=1e-5)
    assert _f(loss) == pytest.approx((7.5 + 10 + 20 - 3 * 7.5), rel=1e-4)
    # within the ratio: zero
    assert _f(anisotropy_loss(torch.log(torch.tensor([[0.3, 0.1, 0.05]])), 7.5)) == 0.0
    # the released computation on raw log-scales: negative logs give ratios <= 1, so 0
    assert _f(anisotropy_loss(torch.log(scales[2:]), 7.5, activated=False)) == 0.0
    # gradient pushes the largest scale down
    log_scales = torch.log(torch.tensor([[1.0, 0.05, 0.05]])).requires_grad_(True)
    anisotropy_loss(log_scales).backward()
    assert log_scales.grad[0, 0] > 0 and log_scales.grad[0, 1:].sum() < 0


def test_per_sample_mse_sums_the_samples_means():
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 1.0)])
    target[1, :, :2] = 0.0  # half the second sample matches
    assert _f(per_sample_mse(prediction, target)) == pytest.approx(0.25 + 0.5)
