"""HexPlane deformation field: layout, initialization, sampling, time mapping, MLP heads."""
import pytest
import torch

from stag4d.gaussians.deformation import DeformationConfig, DeformationField, HexPlaneField
from stag4d.settings import ConfigError, check_settings


def small_cfg(time_resolution=5, **kw):
    base = dict(kplanes_features=4, kplanes_resolution=[5, 5, 5, time_resolution], multires=[1, 2])
    base.update(kw)
    return DeformationConfig(**base)


def test_default_field_layout_and_init():
    field = DeformationField()
    grid = field.grid
    assert grid.feature_dim == 128 and grid.num_scales == 4
    for s, m in enumerate((1, 2, 4, 8)):
        r = 64 * m
        assert tuple(grid.spatial_planes[s].shape) == (3, 32, r, r)
        assert tuple(grid.time_planes[s].shape) == (3, 32, 25, r)
        assert tuple(grid.plane(s, "xt").shape) == (1, 32, 25, r)
        assert tuple(grid.plane(s, "yz").shape) == (1, 32, r, r)
        spatial = grid.spatial_planes[s].detach()
        assert 0.1 <= float(spatial.min()) and float(spatial.max()) <= 0.5
        assert float(spatial.std()) > 0.1  # really uniform over [0.1, 0.5], not constant
        assert torch.equal(grid.time_planes[s], torch.ones_like(grid.time_planes[s]))
    assert tuple(field.feature_out.weight.shape) == (64, 128)
    outs = [head[-1].out_features for head in (field.position_head, field.scale_head, field.rotation_head, field.opacity_head)]
    assert outs == [3, 3, 4, 1]
    # the optimizer groups split the parameters exactly
    ids_mlp = {id(p) for p in field.mlp_parameters()}
    ids_grid = {id(p) for p in field.grid_parameters()}
    assert not ids_mlp & ids_grid and ids_mlp | ids_grid == {id(p) for p in field.parameters()}
    assert len(ids_grid) == 8


def test_features_shape_and_time_independent_at_init():
    field = DeformationField(small_cfg())
    xyz = torch.rand(7, 3) * 2 - 1
    feats = field.grid(xyz, torch.tensor([0.0, 0.3, 0.9]))
    assert feats.shape == (3, 7, 8)
    # time planes are 1: nothing depends on t yet
    assert torch.allclose(feats[0], feats[1]) and torch.allclose(feats[0], feats[2])
    # spatial planes in [0.1, 0.5]: product of three in [1e-3, 0.125]
    feats = feats.detach()
    assert float(feats.min()) >= 1e-3 - 1e-7 and float(feats.max()) <= 0.125 + 1e-7


def test_feature_at_texel_is_product_of_spatial_planes():
    """At a grid node (align_corners=True), the feature is the product of the three texels."""
    cfg = small_cfg(bounds=1.6)
    grid = HexPlaneField(cfg)
    r = cfg.spatial_resolution  # scale 0: 5 texels at coordinates -1, -0.5, 0, 0.5, 1
    i, j, k = 1, 4, 2  # texel indices along x, y, z
    coords = torch.tensor([[-1 + 2 * i / (r - 1), -1 + 2 * j / (r - 1), -1 + 2 * k / (r - 1)]])
    xyz = coords * cfg.bounds
    feats = grid(xyz, torch.tensor([0.4]))[0, 0, : cfg.kplanes_features]  # scale 0 block
    # plane (a, b) is [C, res_b, res_a]: xy[:, j, i], xz[:, k, i], yz[:, k, j]
    xy, xz, yz = (grid.plane(0, n)[0] for n in ("xy", "xz", "yz"))
    expected = xy[:, j, i] * xz[:, k, i] * yz[:, k, j]
    assert torch.allclose(feats, expected, atol=1e-6)


def test_bilinear_between_texels_and_border_padding():
    cfg = small_cfg(multires=[1])
    grid = HexPlaneField(cfg)
    with torch.no_grad():
        grid.spatial_planes[0].fill_(1.0)
        # xy plane linear in x (the width axis = first axis a): value = 1 + column index
        grid.spatial_planes[0][0] = (1.0 + torch.arange(5.0)).view(1, 1, 5).expand(4, 5, 5)
    # x coordinate 0.25 -> column 2.5 -> value 3.5; far outside the box -> border column 4 -> 5
    xyz = torch.tensor([[0.25, 0.1, -0.3], [99.0, 0.0, 0.0]]) * cfg.bounds
    feats = grid(xyz, torch.tensor([0.0]))[0]
    assert torch.allclose(feats[0], torch.full((4,), 3.5), atol=1e-6)
    assert torch.allclose(feats[1], torch.full((4,), 5.0), atol=1e-6)


@pytest.mark.parametrize("mapping", ["released", "half", "full"])
def test_time_mapping(mapping):
    """Time planes valued with their row index: the feature is row(t)^3 (three planes)."""
    cfg = small_cfg(multires=[1], time_resolution=9, time_mapping=mapping)
    grid = HexPlaneField(cfg)
    with torch.no_grad():
        grid.spatial_planes[0].fill_(1.0)
        grid.time_planes[0].copy_(torch.arange(9.0).view(1, 1, 9, 1).expand_as(grid.time_planes[0]))
    times = torch.tensor([0.0, 0.25, 0.5, 0.875])
    feats = grid(torch.zeros(1, 3), times)[:, 0, 0]
    if mapping == "full":
        rows = times * 8  # coordinate 2t - 1 -> row t * (T - 1)
    else:
        rows = (times + 1) / 2 * 8  # coordinate t -> rows 4..8: only the upper half is used
    assert torch.allclose(feats, rows**3, atol=1e-4)


def test_deformation_applies_heads_and_leaves_opacity_alone():
    field = DeformationField(small_cfg())
    n = 6
    means, log_scales = torch.rand(n, 3) - 0.5, torch.randn(n, 3) - 3
    quats, opacity = torch.randn(n, 4), torch.randn(n)
    times = torch.tensor([0.1, 0.7])
    out = field(means, log_scales, quats, opacity, times)
    assert out.means.shape == (2, n, 3) and out.log_scales.shape == (2, n, 3) and out.quats.shape == (2, n, 4)
    assert out.opacity_logits is None
    h = field.hidden(means, times)
    assert torch.allclose(out.means, means + field.position_head(h))
    assert torch.allclose(out.log_scales, log_scales + field.scale_head(h))
    assert torch.allclose(out.quats, quats + field.rotation_head(h))
    # batched times equal one call per time
    single = field(means, log_scales, quats, opacity, times[1:])
    assert torch.allclose(single.means[0], out.means[1], atol=1e-6)
    # opacity head only with deform_opacity
    field_o = DeformationField(small_cfg(deform_opacity=True))
    out_o = field_o(means, log_scales, quats, opacity, times)
    assert out_o.opacity_logits.shape == (2, n)
    assert torch.allclose(out_o.opacity_logits, opacity + field_o.opacity_head(field_o.hidden(means, times)).squeeze(-1))


def test_gradients_reach_planes_mlp_and_points():
    field = DeformationField(small_cfg())
    means = (torch.rand(5, 3) - 0.5).requires_grad_(True)
    out = field(means, torch.zeros(5, 3), torch.zeros(5, 4), None, torch.tensor([0.2]))
    (out.means.square().sum() + out.quats.sum() + out.log_scales.sum()).backward()
    assert means.grad is not None and means.grad.abs().sum() > 0
    for p in field.grid_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert field.opacity_head[-1].weight.grad is None  # disabled head gets nothing


def test_config_dict_roundtrip_and_errors():
    cfg = DeformationConfig(kplanes_features=8, kplanes_resolution=[16, 16, 16, 7], multires=[1, 2], net_width=32,
                            time_mapping="released", bounds=2.0)
    assert (cfg.kplanes_features, cfg.spatial_resolution, cfg.time_resolution, cfg.feature_dim) == (8, 16, 7, 16)
    assert DeformationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="kplanes_resolution"):
        check_settings(DeformationConfig(kplanes_resolution=[64, 32, 64, 25]))
    with pytest.raises(ConfigError, match="time_mapping"):
        check_settings(DeformationConfig(time_mapping="quarter"))
    with pytest.raises(ConfigError, match="time_mapping"):
        DeformationConfig.from_dict({**cfg.to_dict(), "time_mapping": "quarter"})


def test_format_1_config_dicts_still_load():
    """deformation.pt files saved before the typed config used other names."""
    old = {"bounds": 1.6, "features": 8, "spatial_resolution": 16, "time_resolution": 7, "multires": [1, 2],
           "net_width": 32, "time_mapping": "released", "align_corners": True, "deform_opacity": False,
           "plane_init_low": 0.1, "plane_init_high": 0.5}
    cfg = DeformationConfig.from_dict(old)
    assert (cfg.kplanes_features, cfg.kplanes_resolution, cfg.time_mapping) == (8, [16, 16, 16, 7], "released")
