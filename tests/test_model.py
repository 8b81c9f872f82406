"""GaussianModel4D: initialization, stage switch, batched times, PLY save/load, optimizer + LR schedules."""
import math
import os

import numpy as np
import pytest
import torch

from gs_renderer import GaussianModel4D, ModelConfig
from stag4d.errors import DataError
from stag4d.gaussians import knn
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.gaussians.ply import GaussianArrays, attribute_names, read_gaussian_ply, write_gaussian_ply
from stag4d.training.optim import OptimConfig, build_optimizer
from stag4d.training.schedules import expon_lr

SMALL = dict(kplanes_features=4, kplanes_resolution=[8, 8, 8, 5], multires=[1, 2])


def small_model(num_pts=200, sh_degree=0, seed=3, **cfg):
    model = GaussianModel4D(sh_degree, DeformationConfig(**{**SMALL, **cfg}))
    model.initialize_random(num_pts, radius=0.5, seed=seed)
    return model


def perturb(model):
    """Make every part non-trivial: moving time planes, non-identity rotations, SH rest."""
    with torch.no_grad():
        for planes in model.deformation.grid.time_planes:
            planes.add_(0.3 * torch.randn_like(planes))
        model.quats.add_(0.2 * torch.randn_like(model.quats))
        model.sh_rest.normal_(0, 0.1)
        model.opacity_logits.normal_(0, 1)
    return model


def test_initialize_random_matches_spec():
    model = small_model(num_pts=500, seed=7)
    assert model.num == 500
    assert float(model.means.detach().norm(dim=1).max()) <= 0.5 + 1e-6
    # uniform in the ball: the fraction inside radius 0.25 is about (1/2)^3
    inner = float((model.means.detach().norm(dim=1) < 0.25).float().mean())
    assert 0.07 < inner < 0.19
    assert torch.allclose(model.opacities, torch.full((500,), 0.1), atol=1e-6)
    expected_scale = torch.sqrt(knn.mean_sq_dist_knn3(model.means.detach()).clamp_min(1e-7))
    assert torch.allclose(model.activated_scales, expected_scale[:, None].expand(500, 3), rtol=1e-5)
    assert torch.equal(model.quats.detach(), torch.tensor([[1.0, 0, 0, 0]]).expand(500, 4))
    assert float(model.sh_dc.detach().min()) >= 0 and float(model.sh_dc.detach().max()) < 1 / 255
    assert model.sh_rest.shape == (500, 0, 3)
    again = small_model(num_pts=500, seed=7)
    assert torch.equal(again.means, model.means) and torch.equal(again.sh_dc, model.sh_dc)
    other = small_model(num_pts=500, seed=8)
    assert not torch.equal(other.means, model.means)


def test_stage_switch_canonical_and_deformed():
    model = perturb(small_model())
    canonical = model.gaussians_at(None)
    assert canonical.means is model.means and canonical.log_scales is model.log_scales
    assert canonical.quats is model.quats and canonical.opacity_logits is model.opacity_logits
    assert torch.equal(canonical.sh, torch.cat([model.sh_dc, model.sh_rest], dim=1))

    t = 0.4
    deformed = model.gaussians_at(t)
    field = model.deformation
    h = field.hidden(model.means, torch.tensor([t]))[0]
    assert torch.allclose(deformed.means, model.means + field.position_head(h), atol=1e-6)
    assert torch.allclose(deformed.log_scales, model.log_scales + field.scale_head(h), atol=1e-6)
    quats = torch.nn.functional.normalize(model.quats + field.rotation_head(h), dim=-1)
    assert torch.allclose(deformed.quats, quats, atol=1e-6)
    assert torch.equal(deformed.opacity_logits, model.opacity_logits)
    assert not torch.allclose(deformed.means, model.means)
    # other times move differently (time planes perturbed)
    assert not torch.allclose(model.gaussians_at(0.9).means, deformed.means)


def test_fresh_deformation_is_the_same_at_every_time():
    """Time planes start at 1: the offset does not depend on t (but is not zero: the MLP has biases)."""
    model = small_model()
    a, b = model.gaussians_at(0.0), model.gaussians_at(0.8)
    assert torch.allclose(a.means, b.means, atol=1e-6) and torch.allclose(a.quats, b.quats, atol=1e-6)


def test_batched_times_equal_single_calls_and_scale_modifier():
    model = perturb(small_model())
    times = [0.0, 0.3, 0.75]
    batched = model.gaussians_at_times(torch.tensor(times))
    assert len(batched) == 3
    for t, g in zip(times, batched):
        single = model.gaussians_at(t)
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            assert torch.allclose(getattr(g, name), getattr(single, name), atol=1e-6), name
    scaled = model.gaussians_at(0.3, scale_modifier=2.0)
    assert torch.allclose(scaled.log_scales, batched[1].log_scales + math.log(2.0), atol=1e-6)
    assert torch.allclose(model.gaussians_at(None, 0.5).log_scales, model.log_scales + math.log(0.5))


def test_ply_layout_and_roundtrip(tmp_path):
    n, k_rest = 5, 3
    rng = np.random.default_rng(0)
    arrays = GaussianArrays(
        means=rng.normal(size=(n, 3)).astype(np.float32), sh_dc=rng.normal(size=(n, 1, 3)).astype(np.float32),
        sh_rest=rng.normal(size=(n, k_rest, 3)).astype(np.float32), opacity_logits=rng.normal(size=n).astype(np.float32),
        log_scales=rng.normal(size=(n, 3)).astype(np.float32), quats=rng.normal(size=(n, 4)).astype(np.float32))
    path = str(tmp_path / "g.ply")
    write_gaussian_ply(path, arrays)
    from plyfile import PlyData

    vertex = PlyData.read(path)["vertex"]
    assert [p.name for p in vertex.properties] == attribute_names(k_rest)
    assert len(attribute_names(k_rest)) == 6 + 3 + 9 + 1 + 3 + 4
    # 3DGS channel-major f_rest: f_rest_{c * (K-1) + k} = sh_rest[:, k, c]
    assert np.array_equal(vertex["f_rest_4"], arrays.sh_rest[:, 1, 1])
    assert np.array_equal(vertex["f_rest_2"], arrays.sh_rest[:, 2, 0])
    assert np.array_equal(vertex["nx"], np.zeros(n, np.float32))
    back = read_gaussian_ply(path)
    for name in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats"):
        assert np.array_equal(getattr(back, name), getattr(arrays, name)), name
    assert back.sh_degree == 1
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary left behind


def test_ply_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_gaussian_ply(str(tmp_path / "missing.ply"))
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply")
    with pytest.raises(DataError, match="bad.ply"):
        read_gaussian_ply(str(bad))
    with pytest.raises(DataError, match="deformation.pt"):
        GaussianModel4D.load(str(tmp_path))


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_save_load_roundtrip_exact(tmp_path, sh_degree):
    model = perturb(small_model(sh_degree=sh_degree, time_mapping="full"))
    model.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["deformation.pt", "model.ply"]
    loaded = GaussianModel4D.load(str(tmp_path), "cpu")
    assert loaded.sh_degree == sh_degree and loaded.num == model.num
    assert loaded.deformation.cfg == model.deformation.cfg
    for name, value in model.deformation.state_dict().items():
        assert torch.equal(loaded.deformation.state_dict()[name], value), name
    for t in (None, 0.0, 0.55):
        a, b = model.gaussians_at(t), loaded.gaussians_at(t)
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (t, name)


def test_save_load_renders_identically(tmp_path):
    from cam_utils import Camera
    from stag4d.rasterizer import render

    model = perturb(small_model(num_pts=60))
    model.save(str(tmp_path))
    loaded = GaussianModel4D.load(str(tmp_path))
    camera = Camera.orbit(-15.0, 30.0, radius=2.0, size=32, time=0.3)
    background = torch.ones(3)
    with torch.no_grad():
        for t in (None, 0.3):
            a = render(model.gaussians_at(t), camera, background, backend="torch")
            b = render(loaded.gaussians_at(t), camera, background, backend="torch")
            assert torch.equal(a.image, b.image) and torch.equal(a.alpha, b.alpha)
            assert float(a.alpha.max()) > 0.05  # something was drawn


def test_export_frame_ply_equals_gaussians_at(tmp_path):
    model = perturb(small_model(sh_degree=1))
    path = str(tmp_path / "frames" / "07.ply")
    model.export_frame_ply(path, 0.35)
    arrays = read_gaussian_ply(path)
    g = model.gaussians_at(0.35)
    expect = {"means": g.means, "log_scales": g.log_scales, "quats": g.quats, "opacity_logits": g.opacity_logits,
              "sh_dc": g.sh[:, :1], "sh_rest": g.sh[:, 1:]}
    for name, value in expect.items():
        assert np.array_equal(getattr(arrays, name), value.detach().numpy()), name
    assert not np.allclose(arrays.means, model.means.detach().numpy())


def test_build_optimizer_groups_and_lrs():
    model = small_model()
    optimizer, scheduler = build_optimizer(model, OptimConfig())
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["xyz", "deformation", "grid", "f_dc", "f_rest", "opacity", "scaling", "rotation"]
    assert optimizer.defaults["eps"] == 1e-15
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    lrs = scheduler.current_lrs()
    expected0 = {"xyz": 2e-3, "deformation": 1.6e-3, "grid": 1.6e-2, "f_dc": 5e-3, "f_rest": 2.5e-4,
                 "opacity": 0.02, "scaling": 0.01, "rotation": 0.002}
    for name, lr in expected0.items():
        assert lrs[name] == pytest.approx(lr, rel=1e-9), name
    lrs = scheduler.step(1000)  # half-way: geometric mean
    assert lrs["xyz"] == pytest.approx(math.sqrt(2e-3 * 2e-5), rel=1e-9)
    assert lrs["grid"] == pytest.approx(math.sqrt(1.6e-2 * 1.6e-3), rel=1e-9)
    scheduler.step(2000)
    scheduler.step(9000)
    lrs = scheduler.current_lrs()
    assert lrs["xyz"] == pytest.approx(2e-5) and lrs["deformation"] == pytest.approx(1.6e-4)
    assert lrs["grid"] == pytest.approx(1.6e-3) and lrs["scaling"] == 0.01
    custom, _ = build_optimizer(model, OptimConfig(spatial_lr_scale=1.0, feature_lr=0.1, adam_eps=1e-8))
    lr = {g["name"]: g["lr"] for g in custom.param_groups}
    assert lr["xyz"] == pytest.approx(2e-4) and lr["f_rest"] == pytest.approx(0.005)
    assert custom.defaults["eps"] == 1e-8


def test_expon_lr_values():
    # no delay (released): log-linear from init to final, held after max_steps
    assert expon_lr(0, 1e-2, 1e-4, 2000) == pytest.approx(1e-2)
    assert expon_lr(500, 1e-2, 1e-4, 2000) == pytest.approx(1e-2 * (1e-2) ** 0.25)
    assert expon_lr(2000, 1e-2, 1e-4, 2000) == pytest.approx(1e-4)
    assert expon_lr(10**6, 1e-2, 1e-4, 2000) == pytest.approx(1e-4)
    # the delay multiplier is ignored without delay steps
    assert expon_lr(0, 1e-2, 1e-4, 2000, delay_steps=0, delay_mult=0.01) == pytest.approx(1e-2)
    # with delay steps: starts at init * mult, sin easing, full rate at delay_steps
    assert expon_lr(0, 1e-2, 1e-4, 2000, delay_steps=100, delay_mult=0.01) == pytest.approx(1e-4)
    mid = 0.01 + 0.99 * math.sin(math.pi / 4)
    assert expon_lr(50, 1e-2, 1e-4, 2000, 100, 0.01) == pytest.approx(mid * 1e-2 * 1e-2 ** (50 / 2000))
    assert expon_lr(100, 1e-2, 1e-4, 2000, 100, 0.01) == pytest.approx(1e-2 * 1e-2 ** (100 / 2000))
    assert expon_lr(2000, 1e-2, 1e-4, 2000, 100, 0.01) == pytest.approx(1e-4)
    # constant and disabled cases
    assert expon_lr(123, 5e-3, 5e-3, 2000) == 5e-3
    assert expon_lr(-1, 1e-2, 1e-4, 2000) == 0.0


def test_create_from_its_configs():
    model = GaussianModel4D.create(ModelConfig(num_pts=30, sh_degree=1),
                                   DeformationConfig(kplanes_features=4, kplanes_resolution=[8, 8, 8, 5], multires=[1]),
                                   seed=0)
    assert model.num == 30 and model.sh_degree == 1 and model.sh_rest.shape == (30, 3, 3)
    assert model.deformation.cfg.feature_dim == 4 and model.deformation.cfg.time_mapping == "full"


def test_resume_from_state_dicts_after_size_change():
    """A checkpoint (model + optimizer state) loads into a fresh model of another size."""
    model = perturb(small_model(num_pts=50))
    optimizer, scheduler = build_optimizer(model, OptimConfig())
    g = model.gaussians_at(0.2)
    (g.means.square().sum() + g.log_scales.sum() + g.sh.sum()).backward()
    optimizer.step()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    fresh = GaussianModel4D(0, DeformationConfig(**SMALL))
    fresh.initialize_random(10, seed=1)
    fresh.load_state_dict(checkpoint["model"])
    assert fresh.num == 50
    fresh_optimizer, _ = build_optimizer(fresh, OptimConfig())
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])
    assert torch.equal(fresh_optimizer.state[fresh.means]["exp_avg"], optimizer.state[model.means]["exp_avg"])
    assert torch.equal(fresh.gaussians_at(0.6).means, model.gaussians_at(0.6).means)
