"""Densification on a hand-built set: statistics, clone / split / prune, optimizer state alignment."""
import math
from types import SimpleNamespace

import pytest
import torch

from cam_utils import Camera
from gs_renderer import GaussianModel4D
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.rasterizer import render
from stag4d.training.densification import DensifyStrategy, quat_to_rotmat, relative_grad_threshold
from stag4d.training.optim import OptimConfig, build_optimizer

CFG = {"density_start_iter": 1200, "density_end_iter": 6000, "densification_interval": 100,
       "densify_grad_threshold_percent": 20.0}
# index: role
#   0: high gradient, small (max scale 0.05)         -> cloned
#   1: high gradient, large (max scale 0.12 > 0.1)   -> split into 2 (scale 0.075), parent removed
#   2: gradients cancel between the two renders      -> kept
#   3: opacity 0.005 < 0.01                          -> pruned
#   4: max scale 0.2 > 0.1                           -> pruned
#   5: max scale 0.0005 < 0.001                      -> pruned
#   6: never visible                                 -> kept
SCALES = [0.05, 0.12, 0.05, 0.05, 0.2, 0.0005, 0.05]
OPACITIES = [0.5, 0.6, 0.5, 0.005, 0.5, 0.5, 0.5]


def hand_built_model(sh_degree=1):
    n = len(SCALES)
    model = GaussianModel4D(sh_degree, DeformationConfig(kplanes_features=2, kplanes_resolution=[4, 4, 4, 3], multires=[1]))
    means = torch.arange(n * 3, dtype=torch.float32).view(n, 3) * 0.01
    log_scales = torch.log(torch.tensor(SCALES)).view(n, 1) + torch.tensor([[0.0, -0.5, -1.0]])
    quats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2 * i, -0.1 * i, 0.05] for i in range(n)]), dim=-1)
    opacity_logits = torch.logit(torch.tensor(OPACITIES))
    sh_dc = torch.arange(n * 3, dtype=torch.float32).view(n, 1, 3)
    k_rest = (sh_degree + 1) ** 2 - 1
    sh_rest = torch.arange(n * k_rest * 3, dtype=torch.float32).view(n, k_rest, 3)
    model.set_gaussians(means, sh_dc, sh_rest, log_scales, quats, opacity_logits)
    return model


def fake_output(grad_px, size, visible, radii):
    """A RenderOutput-like object whose means2d has a gradient (pixels)."""
    means2d = torch.zeros(grad_px.shape[0], 2, requires_grad=True)
    means2d.grad = grad_px.clone()
    return SimpleNamespace(image=torch.zeros(3, size, size), means2d=means2d, visible=visible,
                           radii=torch.tensor(radii, dtype=torch.int32))


def two_renders():
    """Renders of 100 px and 50 px; NDC gradient = pixel gradient * size / 2."""
    g_a = torch.zeros(7, 2)
    g_b = torch.zeros(7, 2)
    g_a[0] = torch.tensor([0.01, 0.0])  # -> (0.5, 0)
    g_b[0] = torch.tensor([0.02, 0.0])  # -> (0.5, 0): sum (1, 0), norm 1
    g_a[1] = torch.tensor([0.0, 0.016])  # -> norm 0.8
    g_a[2] = torch.tensor([0.01, 0.0])
    g_b[2] = torch.tensor([-0.02, 0.0])  # cancels: vectors are summed before the norm
    for i in (3, 4, 5):
        g_a[i] = torch.tensor([0.002, 0.0])  # -> 0.1
    visible_a = torch.tensor([True, True, True, True, True, True, False])
    visible_b = torch.tensor([True, False, True, False, False, False, False])
    out_a = fake_output(g_a, 100, visible_a, [3, 4, 5, 6, 7, 8, 0])
    out_b = fake_output(g_b, 50, visible_b, [9, 0, 1, 0, 0, 0, 0])
    return [out_a, out_b]


def test_accumulate_statistics():
    strategy = DensifyStrategy(**CFG)
    state = strategy.initialize_state()
    strategy.accumulate(state, two_renders(), step=1200)
    assert torch.allclose(state["grad_sum"], torch.tensor([1.0, 0.8, 0.0, 0.1, 0.1, 0.1, 0.0]), atol=1e-6)
    assert torch.equal(state["count"], torch.tensor([1.0, 1, 1, 1, 1, 1, 0]))
    assert torch.equal(state["max_radii"], torch.tensor([9.0, 4, 5, 6, 7, 8, 0]))
    # a second step: running mean = sum / count
    g = torch.zeros(7, 2)
    g[0] = torch.tensor([0.0, 0.01])  # NDC norm 0.5 at 100 px
    strategy.accumulate(state, [fake_output(g, 100, torch.tensor([True] + [False] * 6), [2, 0, 0, 0, 0, 0, 0])],
                        step=1201)
    assert strategy.mean_grad(state)[0] == pytest.approx(0.75)
    assert state["max_radii"][0] == 9.0
    assert strategy.mean_grad(state)[6] == 0.0  # never seen: 0, not NaN
    # outside the window nothing is added; with a new N the statistics restart
    strategy.accumulate(state, two_renders(), step=6001)
    assert state["count"][0] == 2
    strategy.accumulate(state, [fake_output(torch.zeros(3, 2), 10, torch.ones(3, dtype=torch.bool), [1, 1, 1])])
    assert state["count"].shape == (3,) and torch.equal(state["count"], torch.ones(3))


def test_accumulate_scales_each_axis_by_its_own_image_size():
    """d(pixel)/d(ndc) = size / 2 per axis: a wide image (200 x 100) scales x by 100 and y by 50;
    a square one (the common case, one multiply for both axes) gives the same as two columns."""
    strategy = DensifyStrategy(**CFG)
    grad = torch.tensor([[0.01, 0.0], [0.0, 0.01], [0.003, 0.004]])
    visible = torch.ones(3, dtype=torch.bool)
    wide = fake_output(grad, 100, visible, [1, 1, 1])
    wide.image = torch.zeros(3, 100, 200)  # height 100, width 200
    state = strategy.initialize_state()
    strategy.accumulate(state, [wide], step=1200)
    assert torch.allclose(state["grad_sum"], torch.tensor([1.0, 0.5, (0.3 ** 2 + 0.2 ** 2) ** 0.5]), atol=1e-6)
    state = strategy.initialize_state()
    strategy.accumulate(state, [fake_output(grad, 100, visible, [1, 1, 1])], step=1200)
    columns = torch.stack([grad[:, 0] * 50.0, grad[:, 1] * 50.0], dim=-1).norm(dim=-1)
    assert torch.equal(state["grad_sum"], columns)


def test_relative_threshold_and_schedule():
    grads = torch.tensor([0.0, 5.0, 1.0, 3.0, 2.0, 4.0])
    assert relative_grad_threshold(grads, 2.5) == 5.0  # index int(0.125) = 0 among 5 positives
    assert relative_grad_threshold(grads, 40.0) == 3.0  # index int(0.4 * 5) = 2: the third largest
    assert relative_grad_threshold(torch.zeros(4), 2.5) is None
    strategy = DensifyStrategy()
    assert [strategy.is_refine_step(s) for s in (1101, 1200, 1201, 1301, 1350, 5901, 6001, 6101)] == [
        False, False, True, True, False, True, False, False]


def test_threshold_index_matches_released_rank():
    grads = torch.linspace(0.01, 1.0, 1000)
    # released: sorted descending, element int(0.025 * M), selection >= it: 26 of 1000
    threshold = relative_grad_threshold(grads, 2.5)
    assert int((grads >= threshold).sum()) == 26


def make_state(model):
    optimizer, _ = build_optimizer(model, OptimConfig())
    loss = sum((p * (1 + torch.arange(p.numel(), dtype=torch.float32).view_as(p))).sum()
               for p in (model.means, model.sh_dc, model.sh_rest, model.opacity_logits, model.log_scales, model.quats))
    out = model.deformation(model.means, model.log_scales, model.quats, None, torch.tensor([0.3]))
    (loss + out.means.sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def test_clone_split_prune_and_optimizer_state():
    torch.manual_seed(0)
    model = hand_built_model()
    optimizer = make_state(model)
    before = {name: getattr(model, name).detach().clone() for name in
              ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats")}
    groups = {g["name"]: g for g in optimizer.param_groups}
    moments = {name: {k: v.clone() for k, v in optimizer.state[groups[name]["params"][0]].items()}
               for name in ("xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation")}
    grid_params = list(groups["grid"]["params"])
    grid_state = {id(p): optimizer.state[p]["exp_avg"].clone() for p in grid_params}

    strategy = DensifyStrategy(**CFG)
    stats = strategy.initialize_state()
    strategy.accumulate(stats, two_renders(), step=1201)
    assert strategy.step(model, optimizer, stats, 1200) == {"cloned": 0, "split": 0, "pruned": 0,
                                                            "threshold": None, "refined": False}
    result = strategy.step(model, optimizer, stats, 1201)
    assert (result["cloned"], result["split"], result["pruned"]) == (1, 1, 3)
    assert result["threshold"] == pytest.approx(0.8)

    # survivors in order: originals 0, 2, 6, then the clone of 0, then the two children of 1
    assert model.num == 6
    origin = [0, 2, 6, 0, 1, 1]
    for name in ("sh_dc", "sh_rest", "opacity_logits", "quats"):
        assert torch.equal(getattr(model, name).detach(), before[name][origin]), name
    assert torch.equal(model.means.detach()[:4], before["means"][[0, 2, 6, 0]])
    assert torch.equal(model.log_scales.detach()[:4], before["log_scales"][[0, 2, 6, 0]])
    # children: scale / 1.6, positions drawn around the parent within a few standard deviations
    assert torch.allclose(model.log_scales.detach()[4:], (before["log_scales"][1] - math.log(1.6)).expand(2, 3))
    parent_mean = before["means"][1]
    rotation = quat_to_rotmat(before["quats"][1:2])[0]
    for child in model.means.detach()[4:]:
        local = rotation.T @ (child - parent_mean)  # back in the parent's frame
        assert not torch.equal(child, parent_mean)
        assert bool((local.abs() <= 5 * torch.exp(before["log_scales"][1])).all())

    # optimizer: new parameter objects in the groups, state re-keyed and aligned
    groups = {g["name"]: g for g in optimizer.param_groups}
    pairs = {"xyz": "means", "f_dc": "sh_dc", "f_rest": "sh_rest", "opacity": "opacity_logits",
             "scaling": "log_scales", "rotation": "quats"}
    for group_name, attr in pairs.items():
        param = getattr(model, attr)
        assert groups[group_name]["params"] == [param]
        state = optimizer.state[param]
        old = moments[group_name]
        assert torch.equal(state["step"], old["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].shape == param.shape
            assert torch.equal(state[key][:3], old[key][[0, 2, 6]])  # survivors keep their moments
            assert torch.equal(state[key][3:], torch.zeros_like(state[key][3:]))  # new ones start at 0
    live = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in live for p in optimizer.state)  # no state left under replaced parameters
    assert list(groups["grid"]["params"]) == grid_params
    for p in grid_params:
        assert torch.equal(optimizer.state[p]["exp_avg"], grid_state[id(p)])

    # statistics restart for the new set; training continues
    assert stats["grad_sum"].shape == (6,) and float(stats["count"].sum()) == 0
    g = model.gaussians_at(0.5)
    (g.means.sum() + g.log_scales.sum() + g.sh.sum() + g.opacity_logits.sum() + g.quats.sum()).backward()
    optimizer.step()
    assert model.means.grad.shape == (6, 3)


def test_screen_size_prune_is_opt_in():
    model = hand_built_model(sh_degree=0)
    renders = two_renders()
    off = DensifyStrategy(**{**CFG, "densify_grad_threshold_percent": 0.0})
    off_state = off.initialize_state()
    off.accumulate(off_state, renders, step=1201)
    n_before = model.num
    off.step(model, None, off_state, 1201)  # without an optimizer the model is still updated
    # percent 0: only the top Gaussian (0) is selected and cloned; 1 is not split, so it is
    # pruned as too large, with 3, 4, 5
    assert model.num == n_before + 1 - 4

    model = hand_built_model(sh_degree=0)
    on = DensifyStrategy(**{**CFG, "densify_grad_threshold_percent": 0.0, "screen_size_prune": True,
                            "max_screen_size": 4.5})
    on_state = on.initialize_state()
    on.accumulate(on_state, renders, step=1201)
    result = on.step(model, None, on_state, 1201)
    # radii since last densification: [9, 4, 5, 6, 7, 8, 0]; > 4.5 adds 0, its clone (inherits 9) and 2
    assert result["pruned"] == 4 + 3
    assert model.num == 7 + 1 - 7
    assert torch.equal(model.sh_dc.detach(), hand_built_model(sh_degree=0).sh_dc.detach()[[6]])


def test_strategy_fields_are_its_settings_and_state_is_separate():
    strategy = DensifyStrategy(**CFG)
    assert strategy.densify_grad_threshold_percent == 20.0 and strategy.min_opacity == 0.01
    first, second = strategy.initialize_state(), strategy.initialize_state()
    strategy.accumulate(first, two_renders(), step=1300)
    assert second["grad_sum"] is None and first["grad_sum"] is not None  # one strategy, independent states


def test_accumulate_real_torch_renders():
    model = GaussianModel4D(0, DeformationConfig(kplanes_features=2, kplanes_resolution=[4, 4, 4, 3], multires=[1]))
    model.initialize_random(40, radius=0.5, seed=0)
    cams = [Camera.orbit(0.0, 0.0, size=32), Camera.orbit(-20.0, 90.0, size=24)]
    outputs = [render(model.gaussians_at(0.5), cam, torch.ones(3), backend="torch") for cam in cams]
    sum(out.image.mean() for out in outputs).backward()
    strategy = DensifyStrategy(**CFG)
    state = strategy.initialize_state()
    strategy.accumulate(state, outputs, step=1250)
    visible = outputs[0].visible | outputs[1].visible
    assert bool(visible.any())
    assert torch.equal(state["count"], visible.float())
    assert bool((state["grad_sum"][visible] > 0).any()) and float(state["grad_sum"][~visible].abs().sum()) == 0.0
    expected = outputs[0].means2d.grad * 16 + outputs[1].means2d.grad * 12
    assert torch.allclose(state["grad_sum"], torch.where(visible, expected.norm(dim=-1), 0.0), atol=1e-7)
