"""``GraphedDeformation`` (``cuda_graph_deformation``): which calls it graphs, when it captures,
what it drops, and that a graphed training step equals the eager one.

CPU: the rules, with the capture replaced by a recorder that returns the wrapped module itself
(so results are eager and can be compared exactly). CUDA (``-m cuda``): the real graphs against the
eager field (outputs and every gradient), and whole training steps.
"""
import warnings

import pytest
import torch

from stag4d.gaussians.deformation import DeformationConfig, DeformationField
from stag4d.gaussians.graphed import GraphedDeformation


def small_field(**kw) -> DeformationField:
    torch.manual_seed(0)
    cfg = DeformationConfig(kplanes_features=4, kplanes_resolution=[5, 5, 5, 5], multires=[1, 2], **kw)
    field = DeformationField(cfg)
    with torch.no_grad():  # motion in the time planes, so that the times matter
        for planes in field.grid.time_planes:
            planes.uniform_(0.5, 1.5)
    return field


def gaussians(n: int, device="cpu"):
    g = torch.Generator().manual_seed(n)
    means = (torch.rand(n, 3, generator=g) - 0.5).to(device).requires_grad_()
    log_scales = torch.randn(n, 3, generator=g).to(device).requires_grad_()
    quats = torch.randn(n, 4, generator=g).to(device).requires_grad_()
    opacity = torch.randn(n, generator=g).to(device).requires_grad_()
    return means, log_scales, quats, opacity


class Recorder:
    """Stands in for torch.cuda.make_graphed_callables: records each capture (the inputs' shapes and
    the warm-up iterations), checks the parameters it is given, returns the function itself."""

    def __init__(self, fail: bool = False):
        self.calls = []
        self.warmups = []
        self.fail = fail

    def __call__(self, function, samples, num_warmup_iters, allow_unused_input):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        parameters = list(function.field.parameters())
        inputs, aliases = samples[:len(samples) - len(parameters)], samples[len(samples) - len(parameters):]
        # the parameters as aliases: their memory (the graphs read the values Adam writes there), but
        # leaves of their own, so that the capture's autograd nodes are not the parameters'
        for alias, parameter in zip(aliases, parameters, strict=True):
            assert alias is not parameter and alias.data_ptr() == parameter.data_ptr()
            assert alias.is_leaf and alias.requires_grad
        self.calls.append(tuple(tuple(x.shape) for x in inputs))
        self.warmups.append(num_warmup_iters)
        assert allow_unused_input  # the opacity head's parameters get no gradient
        return function


def test_one_capture_per_shape_the_same_outputs_and_the_parameters_gradients():
    field, recorder = small_field(), Recorder()
    graphed = GraphedDeformation(field, capture=recorder)
    means, log_scales, quats, opacity = gaussians(7)
    times = torch.tensor([0.1, 0.5, 0.9])
    for _ in range(3):
        field.zero_grad(set_to_none=True)
        expected = field(means, log_scales, quats, opacity, times)
        (expected.means.sum() + expected.quats.sum()).backward()
        eager_grads = [p.grad.clone() for p in field.parameters() if p.grad is not None]
        field.zero_grad(set_to_none=True)
        graphed.begin_step()
        out = graphed(means, log_scales, quats, opacity, times)
        for name in ("means", "log_scales", "quats"):
            assert torch.equal(getattr(out, name), getattr(expected, name)), name
        assert out.opacity_logits is None  # deform_opacity is off, as in the released model
        (out.means.sum() + out.quats.sum()).backward()
        # each call is handed the parameters themselves: their gradients arrive (not the aliases')
        grads = [p.grad for p in field.parameters() if p.grad is not None]
        assert len(grads) == len(eager_grads) > 0
        assert all(torch.equal(g, e) for g, e in zip(grads, eager_grads))
    assert recorder.calls == [((7, 3), (7, 3), (7, 4), (3,))] and graphed.captures == 1


def test_a_second_call_of_a_shape_in_one_step_runs_eagerly():
    field, recorder = small_field(), Recorder()
    graphed = GraphedDeformation(field, capture=recorder)
    means, log_scales, quats, _ = gaussians(5)
    graphed.begin_step()
    graphed(means, log_scales, quats, None, torch.tensor([0.2, 0.4]))
    graphed(means, log_scales, quats, None, torch.tensor([0.6, 0.8]))  # same shape: its buffers are in use
    graphed(means, log_scales, quats, None, torch.tensor([0.1, 0.3, 0.5]))  # another shape: its own graph
    assert len(recorder.calls) == 2 and len(graphed.graphs) == 2
    assert len(graphed.used) == 2
    graphed.begin_step()
    assert not graphed.used


def test_a_new_number_of_gaussians_drops_the_old_graphs():
    field, recorder = small_field(), Recorder()
    graphed = GraphedDeformation(field, capture=recorder)
    times = torch.tensor([0.25, 0.75])
    for n in (6, 6, 9):
        graphed.begin_step()
        graphed(*gaussians(n)[:3], None, times)
    assert [shapes[0][0] for shapes in recorder.calls] == [6, 9]
    assert [key[0][0][0] for key in graphed.graphs] == [9]
    assert recorder.warmups == [3, 1]  # the one-time set-up is done by the first capture's warm-up


def test_a_replaced_parameter_drops_the_graphs():
    field, recorder = small_field(), Recorder()
    graphed = GraphedDeformation(field, capture=recorder)
    inputs = gaussians(5)[:3]
    times = torch.tensor([0.5])
    graphed(*inputs, None, times)
    graphed.begin_step()
    graphed(*inputs, None, times)
    assert len(recorder.calls) == 1
    state = {k: v.clone() for k, v in field.state_dict().items()}
    field.load_state_dict(state, assign=True)  # new tensors: a graph would still read the old ones
    graphed.begin_step()
    graphed(*inputs, None, times)
    assert len(recorder.calls) == 2 and len(graphed.graphs) == 1


def test_calls_without_a_gradient_run_eagerly():
    recorder = Recorder()
    graphed = GraphedDeformation(small_field(), capture=recorder)
    means, log_scales, quats, _ = gaussians(4)
    with torch.no_grad():
        graphed(means, log_scales, quats, None, torch.tensor([0.5]))
    graphed(means.detach(), log_scales.detach(), quats.detach(), None, torch.tensor([0.5]))
    assert recorder.calls == [] and not graphed.used


def test_deformed_opacity_goes_through_the_graph():
    field, recorder = small_field(deform_opacity=True), Recorder()
    graphed = GraphedDeformation(field, capture=recorder)
    means, log_scales, quats, opacity = gaussians(4)
    times = torch.tensor([0.3])
    out = graphed(means, log_scales, quats, opacity, times)
    assert recorder.calls == [((4, 3), (4, 3), (4, 4), (1,), (4,))]
    assert torch.equal(out.opacity_logits, field(means, log_scales, quats, opacity, times).opacity_logits)


def test_a_failed_capture_warns_once_and_turns_graphing_off():
    field, recorder = small_field(), Recorder(fail=True)
    graphed = GraphedDeformation(field, capture=recorder)
    means, log_scales, quats, _ = gaussians(4)
    with pytest.warns(UserWarning, match="cuda_graph_deformation: capture failed"):
        out = graphed(means, log_scales, quats, None, torch.tensor([0.5]))
    assert torch.equal(out.means, field(means, log_scales, quats, None, torch.tensor([0.5])).means)
    assert not graphed.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphed.begin_step()
        graphed(means, log_scales, quats, None, torch.tensor([0.5]))  # eager, no second warning


def test_the_option_is_inert_on_the_cpu_and_excludes_compile_deformation(tmp_path):
    from test_trainer import tiny_config

    from stag4d.settings import ConfigError
    from stag4d.training.trainer import Trainer

    cfg = tiny_config(tmp_path, "anchored.yaml", ["cuda_graph_deformation=true"])
    trainer = Trainer(cfg)
    trainer.step = cfg.train.init_steps + 1  # fine stage
    trainer.train_step()
    assert trainer.deformation_call() is trainer.model.deformation and trainer._graphed_deformation is None
    with pytest.raises(ConfigError, match="needs cuda_graph_deformation=false"):
        tiny_config(tmp_path, "stag4d.yaml", ["cuda_graph_deformation=true", "compile_deformation=true"])


@pytest.mark.cuda
@pytest.mark.parametrize("deform_opacity", [False, True])
def test_graphs_equal_the_eager_field_cuda(deform_opacity):
    """Outputs, the inputs' gradients and every parameter's gradient, over five steps: the first
    captures, the next two replay (with the parameters moved in place between them, as Adam does),
    then a new number of Gaussians is captured again (with its shorter warm-up) and replayed."""
    field = small_field(deform_opacity=deform_opacity).cuda()
    graphed = GraphedDeformation(field)
    times = torch.tensor([0.1, 0.4, 0.6, 0.9], device="cuda")

    for n in (300, 300, 300, 260, 260):
        inputs = gaussians(n, "cuda")
        means, log_scales, quats, opacity = inputs
        weights = [torch.randn(4, n, k, device="cuda") for k in (3, 3, 4)] + [torch.randn(4, n, device="cuda")]

        def loss(out):
            terms = [out.means, out.log_scales, out.quats] + ([out.opacity_logits] if deform_opacity else [])
            return sum((w * t).sum() for w, t in zip(weights, terms))

        leaves = list(inputs) + list(field.parameters())
        for leaf in leaves:
            leaf.grad = None
        loss(field(means, log_scales, quats, opacity, times)).backward()
        eager = [None if x.grad is None else x.grad.clone() for x in leaves]
        for leaf in leaves:
            leaf.grad = None
        graphed.begin_step()
        out = graphed(means, log_scales, quats, opacity, times)
        expected = field(means, log_scales, quats, opacity, times)
        for name in ("means", "log_scales", "quats") + (("opacity_logits",) if deform_opacity else ()):
            torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=1e-5, atol=1e-6)
        loss(out).backward()
        for leaf, want in zip(leaves, eager):
            if want is None:  # the opacity head without deform_opacity
                assert leaf.grad is None or not leaf.grad.any()
                continue
            # grid_sample's backward adds with atomics: the order of the sums differs between runs
            torch.testing.assert_close(leaf.grad, want, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for p in field.parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert graphed.captures == 2 and list(graphed.graphs)[0][0][0][0] == 260


@pytest.mark.cuda
def test_graphed_deformation_step_equals_plain_step_cuda(tmp_path):
    from test_train_speed import FAST, assert_same_step, run_steps
    from test_trainer import tiny_config

    gpu = ["device=cuda", "backend=gsplat"]
    plain = run_steps(tiny_config(tmp_path, "stag4d.yaml", gpu + FAST + ["cuda_graph_deformation=false"]), steps=3)
    graphed = run_steps(tiny_config(tmp_path, "stag4d.yaml", gpu + FAST + ["cuda_graph_deformation=true"]), steps=3)
    runner = graphed[2]._graphed_deformation
    assert runner is not None and runner.captures == 1 and len(runner.graphs) == 1
    # gsplat's and grid_sample's backward add with atomics (see test_train_speed)
    assert_same_step(plain, graphed, later_grad_tolerance=5e-3)


@pytest.mark.cuda
def test_replayed_steps_accumulate_the_field_gradients_on_the_current_stream_cuda():
    """A replayed step's backward accumulates each field parameter's gradient on the stream that
    produced it: no "AccumulateGrad node's stream does not match" warning (torch gives it once per
    process; warn-always shows every mismatch), and the capture's own hand-over between its side
    streams is not reported either (the warning is off during captures). Had the capture been given the parameters
    themselves, make_graphed_callables' warm-up and capture would have made their AccumulateGrad
    nodes on its own stream, and its static outputs would keep those nodes alive, so every later
    step would accumulate across streams (an H200 run of main.py did: 9027 such warnings in its
    first 1000 steps, about 30 a fine step)."""
    field = small_field().cuda()
    graphed = GraphedDeformation(field)
    means, log_scales, quats, opacity = gaussians(300, "cuda")
    times = torch.tensor([0.1, 0.4, 0.6, 0.9], device="cuda")

    def step():
        for leaf in [means, log_scales, quats, opacity] + list(field.parameters()):
            leaf.grad = None
        graphed.begin_step()
        out = graphed(means, log_scales, quats, opacity, times)
        (out.means.sum() + out.log_scales.sum() + out.quats.sum()).backward()

    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(3):  # the capture (its own hand-over between streams is not reported), 2 replays
                step()
            torch.cuda.synchronize()
    finally:
        torch.set_warn_always(warn_always)
    assert graphed.captures == 1
    mismatches = [w for w in record if "AccumulateGrad node's stream" in str(w.message)]
    assert not mismatches, f"{len(mismatches)} gradients accumulated across streams in the capture and 2 replays"


class StreamWarningSetting:
    """Stands in for torch.autograd.graph.set_warn_on_accumulate_grad_stream_mismatch (which has no
    getter): remembers the setting."""

    def __init__(self):
        self.enabled = True

    def __call__(self, enabled: bool) -> None:
        self.enabled = enabled


@pytest.mark.parametrize("fail", [False, True])
def test_the_stream_mismatch_warning_is_off_during_each_capture_only(monkeypatch, fail):
    """make_graphed_callables' own warm-up and capture hand its samples' gradients from one side
    stream to another: torch's warning of that (a dozen lines in every run) is off for the captures
    of the field and of the guidance's VAE encoder, and on again after them, failed ones included,
    so a mismatch in the training steps is still reported."""
    from guidance.zero123 import GraphedEncoder

    setting = StreamWarningSetting()
    monkeypatch.setattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", setting)
    seen = []

    def capture(function, samples, num_warmup_iters, allow_unused_input=False):
        seen.append(setting.enabled)
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return function

    graphed = GraphedDeformation(small_field(), capture=capture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failed capture's own warning
        graphed(*gaussians(4)[:3], None, torch.tensor([0.5]))
    assert seen == [False] and setting.enabled

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    encoder = GraphedEncoder(lambda pixels: (pixels * 2, pixels * 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder(torch.rand(1, 3, 8, 8, requires_grad=True))
    assert seen == [False, False] and setting.enabled
