"""Zero123 SDS guidance: loading (real folder layout), embeddings, SDS loss, schedule, view choice.

A tiny randomly initialized model of the real classes is saved with ``save_pretrained`` in the
released folder layout (tmp dir) and loaded through the same code as the real one.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the hub from the tests

import json
import math
import random
import warnings

import pytest
import torch

import cam_utils
from guidance import Guidance, GuidanceConfig, load_guidance
from guidance.conditioning import (
    anchor_for_azimuth,
    choose_condition_view,
    sample_random_view,
)
from guidance.random_model import TINY_EMBED, build_random_components
from guidance.schedule import timestep_window, window_fractions
from stag4d.errors import ModelUnavailable

EMBED = TINY_EMBED  # CLIP projection = UNet cross-attention = camera projection width (768 in the real model)


class FixedRng:
    """random.Random stand-in whose random() returns a fixed value (forces a branch)."""

    def __init__(self, value: float):
        self.value = value
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.value


def build_tiny_components():
    """The tiny random Zero123 of guidance.random_model (seed 0), on the CPU in float32."""
    return build_random_components(tiny=True)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random model written by ``python -m guidance.random_model OUT --tiny``."""
    from guidance import random_model

    folder = str(tmp_path_factory.mktemp("zero123-tiny"))
    random_model.main([folder, "--tiny"])
    return folder


@pytest.fixture(scope="module")
def guide(tiny_model_dir):
    return load_guidance(GuidanceConfig(zero123_model=tiny_model_dir), "cpu")


def _frames(num_frames=2, views=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(num_frames, 3, 64, 64, generator=gen)
    anchors = torch.rand(num_frames, views, 3, 40, 40, generator=gen)
    return ref, anchors


def _prepare(guide):
    ref, anchors = _frames()
    guide.prepare(ref, anchors, generator=torch.Generator().manual_seed(0))
    return guide


@pytest.fixture(scope="module")
def prepared(guide):
    return _prepare(guide)


@pytest.fixture
def own_prepared(tiny_model_dir):
    """A prepared guidance of the test's own, for tests that change its speed options."""
    return _prepare(load_guidance(GuidanceConfig(zero123_model=tiny_model_dir), "cpu"))


# ---------------------------------------------------------------------------------------------
# Loading


def test_folder_layout_matches_the_released_model(tiny_model_dir):
    names = set(os.listdir(tiny_model_dir))
    assert {"model_index.json", "vae", "unet", "image_encoder", "scheduler", "feature_extractor",
            "clip_camera_projection"} <= names
    with open(os.path.join(tiny_model_dir, "clip_camera_projection", "config.json")) as f:
        config = json.load(f)
    assert config["_class_name"] == "CLIPCameraProjection"
    assert config["embedding_dim"] == EMBED and config["additional_embeddings"] == 4
    weights = os.listdir(os.path.join(tiny_model_dir, "clip_camera_projection"))
    assert "diffusion_pytorch_model.safetensors" in weights
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(tiny_model_dir, "clip_camera_projection", "diffusion_pytorch_model.safetensors"))
    assert set(tensors) == {"proj.weight", "proj.bias"}
    assert tuple(tensors["proj.weight"].shape) == (EMBED, EMBED + 4)


def test_loaded_model_is_frozen_fp32_on_cpu(guide, tiny_model_dir):
    assert isinstance(guide, Guidance)
    assert guide.dtype == torch.float32  # fp16 only on CUDA
    assert guide.num_train_timesteps == 1000
    assert guide.latent_size == 32
    for module in (guide.vae, guide.unet, guide.image_encoder, guide.projection):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    # the projection weights are the saved ones, read back through the released layout
    from safetensors.torch import load_file

    saved = load_file(os.path.join(tiny_model_dir, "clip_camera_projection", "diffusion_pytorch_model.safetensors"))
    assert torch.equal(guide.projection.proj.weight, saved["proj.weight"])
    # the seconds of each part of the load, as main.py prints them
    assert list(guide.load_seconds) == ["vae", "unet", "projection", "image_encoder", "to device", "speed options"]
    assert all(seconds >= 0 for seconds in guide.load_seconds.values())


def test_missing_model_names_the_path(tmp_path):
    missing = str(tmp_path / "no-such-zero123")
    with pytest.raises(ModelUnavailable) as info:
        load_guidance(GuidanceConfig(zero123_model=missing), "cpu")
    message = str(info.value)
    assert missing in message and "\n" not in message
    assert "zero123_model=" in message and "anchored.yaml" in message


def test_incomplete_folder_names_the_missing_part(tiny_model_dir, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    shutil.rmtree(partial / "clip_camera_projection")
    with pytest.raises(ModelUnavailable, match="clip_camera_projection"):
        load_guidance(GuidanceConfig(zero123_model=str(partial)), "cpu")


def test_hub_id_offline_gives_model_unavailable(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ModelUnavailable) as info:
        load_guidance(GuidanceConfig(zero123_model="ashawkey/zero123-xl-diffusers"), "cpu")
    assert "ashawkey/zero123-xl-diffusers" in str(info.value)


def test_importing_guidance_is_light():
    import subprocess
    import sys

    code = "import sys, guidance, guidance.schedule, guidance.conditioning; " \
           "print(any(m in sys.modules for m in ('diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Embeddings and SDS


def test_prepare_embeds_reference_and_anchors_once(prepared):
    assert prepared.clip_embeds.shape == (2, 7, EMBED)
    assert prepared.cond_latents.shape == (2, 7, 4, 32, 32)
    assert prepared.clip_embeds.dtype == prepared.dtype
    # different images give different embeddings; slot 0 is the reference frame
    ref, anchors = _frames()
    clip_ref, _ = prepared.embed_images(ref[:1])
    assert torch.allclose(clip_ref[0], prepared.clip_embeds[0, 0], atol=1e-5)
    clip_anchor, _ = prepared.embed_images(anchors[1, 3:4])
    assert torch.allclose(clip_anchor[0], prepared.clip_embeds[1, 4], atol=1e-5)
    assert not torch.allclose(prepared.clip_embeds[0, 0], prepared.clip_embeds[0, 1])


def test_prepare_without_anchors_keeps_only_the_reference(guide):
    ref, _ = _frames()
    guide.prepare(ref, None)
    assert guide.num_anchors == 0 and guide.clip_embeds.shape == (2, 1, EMBED)
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="cond_view"):
        guide.sds_loss(images, torch.tensor([0]), torch.tensor([2]), torch.zeros(1), torch.zeros(1),
                       torch.zeros(1), step=0)
    ref, anchors = _frames()
    guide.prepare(ref, anchors, generator=torch.Generator().manual_seed(0))  # restore for later tests


def _batch(size=3, seed=3):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 3, 128, 128, generator=gen)
    frame_idx = torch.tensor([0, 1, 1, 0][:size])
    cond_view = torch.tensor([-1, 2, 5, 0][:size])
    d_elev = torch.tensor([10.0, -20.0, 5.0, 0.0][:size])
    d_azim = torch.tensor([15.0, -25.0, 170.0, 30.0][:size])
    d_radius = torch.zeros(size)
    return images, frame_idx, cond_view, d_elev, d_azim, d_radius


def test_sds_gradient_reaches_the_image_only(prepared):
    images, *rest = _batch()
    images.requires_grad_(True)
    loss = prepared.sds_loss(images, *rest, step=100)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert torch.isfinite(images.grad).all()
    for module in (prepared.vae, prepared.unet, prepared.image_encoder, prepared.projection):
        assert all(p.grad is None for p in module.parameters())


def test_sds_loss_value_is_half_the_squared_weighted_residual(prepared):
    """Replay the SDS step by hand from the same draws."""
    images, frame_idx, cond_view, d_elev, d_azim, d_radius = _batch(size=2)
    noise = prepared.draw_noise(2, step=0, generator=torch.Generator().manual_seed(5))
    loss = prepared.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, step=0, noise=noise)
    from guidance.zero123 import camera_code, resize_square

    with torch.no_grad():
        latents = prepared.encode_images(resize_square(images), noise.latent_eps)
        slot = cond_view + 1
        context = prepared.projection(torch.cat([prepared.clip_embeds[frame_idx, slot],
                                                 camera_code(d_elev, d_azim, d_radius)], -1))
        a = prepared.alphas_cumprod[noise.timesteps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise.noise
        cond = prepared.cond_latents[frame_idx, slot]
        eps_c = prepared.unet(torch.cat([noisy, cond], 1), noise.timesteps, encoder_hidden_states=context[:, None]).sample
        eps_u = prepared.unet(torch.cat([noisy, torch.zeros_like(cond)], 1), noise.timesteps,
                              encoder_hidden_states=torch.zeros_like(context)[:, None]).sample
        eps = eps_u + 5.0 * (eps_c - eps_u)
        expected = 0.5 * (((1 - a) * (eps - noise.noise)) ** 2).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_batched_sds_equals_looped_single_samples(prepared):
    images, frame_idx, cond_view, d_elev, d_azim, d_radius = _batch(size=3)
    noise = prepared.draw_noise(3, step=1200, generator=torch.Generator().manual_seed(7))
    assert noise.timesteps.min() >= timestep_window(1200, GuidanceConfig())[0] and noise.timesteps.max() <= timestep_window(1200, GuidanceConfig())[1]

    batched_images = images.clone().requires_grad_(True)
    batched = prepared.sds_loss(batched_images, frame_idx, cond_view, d_elev, d_azim, d_radius, step=1200, noise=noise)
    batched.backward()

    looped_images = images.clone().requires_grad_(True)
    looped = sum(
        prepared.sds_loss(looped_images[i : i + 1], frame_idx[i : i + 1], cond_view[i : i + 1], d_elev[i : i + 1],
                          d_azim[i : i + 1], d_radius[i : i + 1], step=1200, noise=noise.select(i))
        for i in range(3)
    )
    looped.backward()
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-6)
    scale = looped_images.grad.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(batched_images.grad, looped_images.grad, rtol=1e-3, atol=1e-4 * scale)


def test_sds_conditioning_changes_with_the_view(prepared):
    """Same render and draws, another conditioning view or camera -> another loss."""
    images, frame_idx, cond_view, d_elev, d_azim, d_radius = _batch(size=1)
    noise = prepared.draw_noise(1, step=0, generator=torch.Generator().manual_seed(2))
    base = prepared.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, 0, noise)
    other_view = prepared.sds_loss(images, frame_idx, torch.tensor([3]), d_elev, d_azim, d_radius, 0, noise)
    other_pose = prepared.sds_loss(images, frame_idx, cond_view, d_elev, d_azim + 90, d_radius, 0, noise)
    again = prepared.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, 0, noise)
    assert base.item() == again.item()
    assert other_view.item() != base.item() and other_pose.item() != base.item()


def _sds_of_two(guide):
    """The SDS loss of two fixed renders with fixed draws."""
    images, *rest = _batch(size=2)
    noise = guide.draw_noise(2, step=0, generator=torch.Generator().manual_seed(4))
    return guide.sds_loss(images, *rest, step=0, noise=noise)


def test_speed_options_are_inert_on_the_cpu(own_prepared):
    """channels-last and torch.compile are CUDA only (tests/test_train_speed.py compares them with
    the plain path there): on the CPU the modules stay as they are and the loss is the same."""
    guide = own_prepared
    eager = _sds_of_two(guide)
    guide.optimize(channels_last=True, compile=True, cudnn_benchmark=True, vae_attention="matmul")
    assert guide.unet.conv_in.weight.is_contiguous() and guide.unet_forward is guide.unet
    assert guide.vae_moments == guide.posterior_moments
    assert {type(p).__name__ for p in guide.vae.attn_processors.values()} == {"AttnProcessor2_0"}
    assert _sds_of_two(guide).item() == eager.item()


def test_matmul_vae_attention_equals_sdpa_values_and_input_gradients():
    """``guidance_vae_attention=matmul`` (diffusers' AttnProcessor) computes the attention that SDPA
    does: the posterior moments and their gradient to the pixels agree to float32 rounding, and
    the processor really changes (the comparison could fail)."""
    from guidance.zero123 import set_vae_attention

    vae = build_tiny_components().vae.requires_grad_(False)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    weights = torch.randn(2, 2 * vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    results = {}
    for kind in ("sdpa", "matmul"):
        set_vae_attention(vae, kind)
        names = {type(p).__name__ for p in vae.attn_processors.values()}
        assert names == {"AttnProcessor" if kind == "matmul" else "AttnProcessor2_0"}
        x = pixels.clone().requires_grad_()
        moments = vae.encode(x).latent_dist.parameters
        (moments * weights[:, :, : moments.shape[-2], : moments.shape[-1]]).sum().backward()
        results[kind] = (moments.detach(), x.grad)
    (sdpa, sdpa_grad), (matmul, matmul_grad) = results["sdpa"], results["matmul"]
    assert torch.allclose(matmul, sdpa, rtol=1e-5, atol=1e-5) and not torch.equal(sdpa_grad, torch.zeros_like(sdpa_grad))
    assert torch.allclose(matmul_grad, sdpa_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="vae attention"):
        set_vae_attention(vae, "flash")


def test_a_failing_compiled_network_falls_back_to_eager(own_prepared):
    """A compiled UNet / VAE encoder that raises (no Triton, a compiler error) warns once and the
    eager module runs instead, from then on; the loss is the eager one."""
    guide = own_prepared
    eager = _sds_of_two(guide)

    def broken(*args, **kwargs):
        raise RuntimeError("backend='inductor' raised:\nRuntimeError: Cannot find a working triton installation")

    guide.unet_forward = guide.vae_moments = broken
    with pytest.warns(UserWarning, match="compiled unet_forward failed .*Cannot find a working triton") as record:
        loss = _sds_of_two(guide)
    assert sum("compiled vae_moments failed" in str(w.message) for w in record) == 1
    assert loss.item() == eager.item()
    assert guide.unet_forward is guide.unet and guide.vae_moments == guide.posterior_moments


def test_an_eager_network_that_fails_raises_without_a_compile_warning_or_a_retry(own_prepared, monkeypatch):
    """Nothing compiled: a failure of the eager VAE encoder is the run's error, raised at once. The
    fallback is for compiled calls only (it once took the eager VAE call for a compiled one, since
    each access to a method makes a new bound method: it warned "the compiled vae_moments failed"
    and ran the failing call again)."""
    guide = own_prepared
    assert guide.vae_moments == guide.posterior_moments and not guide.compiled_regions
    calls = []

    def failing(self, pixels):
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(type(guide), "posterior_moments", failing)
    guide.vae_moments = guide.posterior_moments  # as __init__ sets it, now the failing method
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a compile warning would fail here
        with pytest.raises(RuntimeError, match="illegal memory access"):
            _sds_of_two(guide)
    assert calls == [1]


def test_compile_scope_blocks_picks_the_unet_and_encoder_blocks():
    """guidance_compile_scope=blocks compiles the UNet's ResNet and attention blocks and the VAE
    encoder's, never one inside another (a block would be traced twice) and nothing of the decoder."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from guidance.zero123 import encoder_regions, unet_regions

    parts = build_tiny_components()
    unet, encoder = unet_regions(parts.unet), encoder_regions(parts.vae)
    assert {type(m) for m in unet} == {ResnetBlock2D, Transformer2DModel}
    assert {type(m) for m in encoder} == {ResnetBlock2D, Attention}
    assert len(unet) == sum(isinstance(m, (ResnetBlock2D, Transformer2DModel)) for m in parts.unet.modules())
    in_encoder = {id(m) for m in parts.vae.encoder.modules()}
    assert all(id(m) in in_encoder for m in encoder) and len(encoder) > 2
    for regions in (unet, encoder):
        chosen = {id(m) for m in regions}
        assert not any(id(inner) in chosen for m in regions for inner in list(m.modules())[1:])


def test_compile_regions_compiles_in_place_and_gives_the_eager_calls_back():
    """Only the modules given get a compiled call; dynamo's recompile limit (shared by every block,
    one code object) is raised to 4 graphs a block; compile=False gives the eager calls back."""
    import torch._dynamo

    from stag4d.compiled_regions import compile_regions, is_compiled

    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    # dynamo's own patch, which puts the limit back afterwards (pytest's monkeypatch would delete
    # the key from dynamo's config module on undo)
    with torch._dynamo.config.patch(**{name: 1}):
        chosen = compile_regions([model[0], model[2]])
        assert getattr(torch._dynamo.config, name) == 8
    assert [is_compiled(m) for m in model] == [True, False, True] and not is_compiled(model)
    compile_regions(chosen, compile=False)
    assert not any(is_compiled(m) for m in model)


def test_compile_scope_is_inert_on_the_cpu_and_checked(own_prepared):
    guide = own_prepared
    eager = _sds_of_two(guide)
    guide.optimize(compile=True, compile_scope="blocks")
    assert guide.compiled_regions == {} and guide.unet_forward is guide.unet
    assert _sds_of_two(guide).item() == eager.item()
    with pytest.raises(ValueError, match="compile scope 'layers'"):
        guide.optimize(compile=True, compile_scope="layers")


def _raising_backend(graph, example_inputs):
    raise RuntimeError("backend='inductor' raised:\nRuntimeError: Cannot find a working triton installation")


def test_a_failing_compiled_block_gives_its_blocks_back_to_eager(own_prepared):
    """With guidance_compile_scope=blocks a compile failure surfaces in a block; the call falls back
    as a whole-model compile does, and that call's blocks get their eager calls back (else the eager
    retry would fail in them again). The blocks of the other call stay compiled."""
    from guidance.zero123 import encoder_regions, unet_regions
    from stag4d.compiled_regions import is_compiled

    guide = own_prepared
    eager = _sds_of_two(guide)
    unet_blocks, encoder_blocks = unet_regions(guide.unet), encoder_regions(guide.vae)
    for block in unet_blocks:
        block.compile(backend=_raising_backend)
    guide.compiled_regions = {"unet_forward": unet_blocks, "vae_moments": encoder_blocks}
    with pytest.warns(UserWarning, match="compiled unet_forward failed .*Cannot find a working triton"):
        loss = _sds_of_two(guide)
    assert loss.item() == eager.item()
    assert guide.unet_forward is guide.unet and not any(is_compiled(b) for b in unet_blocks)
    assert list(guide.compiled_regions) == ["vae_moments"]


def test_embedding_runs_the_compiled_blocks_eagerly(own_prepared):
    """prepare() embeds the conditions once per run: its VAE calls run eagerly even when the encoder's
    blocks are compiled (a compile for those shapes would only cost start-up time). The blocks are
    compiled with a backend that raises, so any compiled call would fail the test."""
    from guidance.zero123 import encoder_regions

    guide = own_prepared
    before = guide.cond_latents.clone()
    blocks = encoder_regions(guide.vae)
    for block in blocks:
        block.compile(backend=_raising_backend)
    guide.compiled_regions = {"vae_moments": blocks}
    _prepare(guide)
    assert torch.equal(guide.cond_latents, before)


def test_camera_code():
    from guidance.zero123 import camera_code

    code = camera_code(torch.tensor([30.0, -90.0]), torch.tensor([90.0, 180.0]), torch.tensor([0.0, 0.5]))
    expected = torch.tensor([[math.pi / 6, 1.0, 0.0, 0.0], [-math.pi / 2, 0.0, -1.0, 0.5]])
    torch.testing.assert_close(code, expected, atol=1e-6, rtol=0)


def test_clip_preprocess_matches_the_processor_normalization(guide):
    """Our torch preprocessing: 224x224 crop, CLIP mean/std (constant image -> exact values)."""
    gray = torch.full((1, 3, 256, 256), 0.5)
    pixels = guide.clip_preprocess(gray)
    assert pixels.shape == (1, 3, 224, 224)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(pixels[0, :, 100, 100], (0.5 - mean) / std, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Schedule


@pytest.mark.parametrize(
    "step, window",
    [(0, (500, 950)), (1500, (260, 725)), (3000, (20, 500)), (5000, (20, 500))],
)
def test_timestep_window_follows_the_schedule(step, window):
    assert timestep_window(step, GuidanceConfig()) == window


def test_timestep_window_reads_its_settings():
    cfg = GuidanceConfig(min_step_start=0.2, min_step_end=0.2, max_step_start=0.98, max_step_end=0.98,
                         anneal_steps=10)
    assert timestep_window(0, cfg) == (200, 980) == timestep_window(100, cfg)
    assert window_fractions(5, GuidanceConfig(anneal_steps=10)) == pytest.approx((0.26, 0.725))
    with pytest.raises(ValueError, match="min_step_start"):
        timestep_window(0, GuidanceConfig(min_step_start=0.9, max_step_start=0.5))


# ---------------------------------------------------------------------------------------------
# Conditioning view (SPEC section 4, step 3)

# azimuth -> (anchor k, anchor-relative azimuth) with the Zero123++ v1.1 table
ANCHOR_CASES = {
    45: (0, 15.0),
    100: (1, 10.0),
    170: (2, 20.0),
    -45: (5, -15.0),  # anchor 330 seen as -30
    -170: (3, -20.0),  # anchor 210 seen as -150
    -100: (4, -10.0),  # anchor 270 seen as -90
    30: (0, 0.0),
    -30: (5, 0.0),
    -180: (3, -30.0),
}


@pytest.mark.parametrize("azimuth", [10, -20, 0, 29, -29])
def test_small_azimuth_always_uses_the_reference(azimuth):
    rng = FixedRng(0.99)  # would pick an anchor if asked
    assert choose_condition_view(azimuth, 12, None, rng) == (-1, 12.0, float(azimuth))
    assert rng.calls == 0


@pytest.mark.parametrize("azimuth", sorted(ANCHOR_CASES))
def test_large_azimuth_reference_branch(azimuth):
    rng = FixedRng(0.59)  # < 0.6: reference
    assert choose_condition_view(azimuth, -7, None, rng) == (-1, -7.0, float(azimuth))
    assert rng.calls == 1


@pytest.mark.parametrize("azimuth", sorted(ANCHOR_CASES))
def test_large_azimuth_anchor_branch(azimuth):
    table = cam_utils.anchor_table()
    k, rel_azimuth = ANCHOR_CASES[azimuth]
    view, rel_elev, rel_azim = choose_condition_view(azimuth, -7, table, FixedRng(0.6))
    assert view == k
    # SPEC: k = floor(az / 60) for az > 0, floor((360 + az) / 60) for az < 0
    assert k == (math.floor(azimuth / 60) if azimuth > 0 else math.floor((360 + azimuth) / 60))
    assert rel_elev == -7.0 - table[k][1]
    assert rel_azim == rel_azimuth
    # the relative pose points from the anchor camera to the sample camera
    assert (table[k][0] + rel_azim - azimuth) % 360 == 0
    assert abs(rel_azim) <= 30


def test_relative_pose_is_consistent_with_the_anchor_camera():
    """Sample camera == orbit camera at (anchor elevation + rel_elev, anchor azimuth + rel_azim)."""
    table = cam_utils.anchor_table()
    rng = random.Random(0)
    for _ in range(50):
        d_elev, azimuth = sample_random_view(rng, 0.0)
        view, rel_elev, rel_azim = choose_condition_view(azimuth, d_elev, table, FixedRng(0.99))
        if view < 0:
            continue
        anchor_az, anchor_el = table[view]
        rebuilt = cam_utils.orbit_position(anchor_el + rel_elev, anchor_az + rel_azim, 2.0)
        target = cam_utils.orbit_position(d_elev, azimuth, 2.0)
        assert abs(rebuilt - target).max() < 1e-9


def test_empty_anchor_table_always_uses_the_reference():
    assert choose_condition_view(120, 0, (), FixedRng(0.99)) == (-1, 0.0, 120.0)


def test_anchor_sectors_cover_the_circle():
    assert [anchor_for_azimuth(a, 6) for a in (0, 59, 60, 179, 180, 239, 300, 359.5, -1)] == [0, 0, 1, 2, 3, 3, 5, 5, 5]


@pytest.mark.parametrize("elevation, low, high", [(0, -30, 30), (-30, -30, 60), (20, -50, 30), (60, -90, 20)])
def test_sample_random_view_ranges(elevation, low, high):
    # SPEC 4.2: [max(min(-30, -30 - e), -80 - e), min(max(30, 30 - e), 80 - e))
    rng = random.Random(1)
    draws = [sample_random_view(rng, elevation) for _ in range(3000)]
    elevations = [d for d, _ in draws]
    azimuths = [a for _, a in draws]
    expected_low = max(min(-30, -30 - elevation), -80 - elevation)
    expected_high = min(max(30, 30 - elevation), 80 - elevation)
    assert (expected_low, expected_high) == (low, high)
    assert min(elevations) == low and max(elevations) == high - 1
    assert min(azimuths) == -180 and max(azimuths) == 179
    assert all(isinstance(v, int) for v in elevations + azimuths)


def test_warm_up_draws_nothing_and_changes_no_result(own_prepared):
    """Trainer._start_guidance warms the guidance up (on CUDA: compile, graph captures) before the
    first step: it must draw no random numbers and leave the SDS of a step as it was."""
    guide = own_prepared
    before = _sds_of_two(guide)
    state = torch.get_rng_state()
    seconds = guide.warm_up(3)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(seconds) == ["VAE encoder", "UNet"] and all(s >= 0 for s in seconds.values())
    assert _sds_of_two(guide).item() == before.item()
    assert all(p.grad is None for p in guide.vae.parameters())


# ---------------------------------------------------------------------------------------------
# CUDA (fp16 path)


@pytest.mark.cuda
def test_fp16_sds_on_cuda(tiny_model_dir):
    guide = load_guidance(GuidanceConfig(zero123_model=tiny_model_dir), "cuda")
    assert guide.dtype == torch.float16 and guide.unet.dtype == torch.float16
    ref, anchors = _frames()
    guide.prepare(ref.cuda(), anchors.cuda())
    images, frame_idx, cond_view, d_elev, d_azim, d_radius = _batch(size=4)
    images = images.cuda().requires_grad_(True)
    loss = guide.sds_loss(images, frame_idx, cond_view, d_elev, d_azim, d_radius, step=10)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.cuda
def test_warm_up_builds_the_step_graphs_and_draws_nothing_cuda(tiny_model_dir):
    """On CUDA with the default speed options the warm-up captures the CUDA graphs of a step's
    shapes (the step then replays them: no second capture) and leaves both random generators as
    they were."""
    guide = load_guidance(GuidanceConfig(zero123_model=tiny_model_dir), "cuda")
    ref, anchors = _frames()
    guide.prepare(ref.cuda(), anchors.cuda())
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    guide.warm_up(4)
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert len(guide.graphed_unet.graphs) == 1 and len(guide.graphed_encoder.graphs) == 1
    images, *rest = _batch(size=4)
    loss = guide.sds_loss(images.cuda().requires_grad_(True), *rest, step=10)
    assert torch.isfinite(loss)
    assert len(guide.graphed_unet.graphs) == 1 and len(guide.graphed_encoder.graphs) == 1


@pytest.fixture(scope="module")
def variant_model_dir(tmp_path_factory):
    """Only fp16 weight files (the "fp16" variant), as ``random_model OUT --tiny --fp16`` writes them."""
    from guidance import random_model

    folder = str(tmp_path_factory.mktemp("zero123-variant"))
    random_model.main([folder, "--tiny", "--fp16"])
    return folder


def test_local_variant_choice(tmp_path):
    from guidance.zero123 import local_variant

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        (tmp_path / name).write_text("x")
    assert local_variant(str(tmp_path), want_fp16=True) == "fp16"
    assert local_variant(str(tmp_path), want_fp16=False) is None
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    assert local_variant(str(tmp_path), want_fp16=False) == "fp16"  # the only weights there
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert local_variant(str(tmp_path), want_fp16=True) is None


def test_fp16_variant_only_folder_loads_in_fp32_on_cpu(variant_model_dir):
    from safetensors.torch import load_file

    unet_folder = os.path.join(variant_model_dir, "unet")
    assert sorted(os.listdir(unet_folder)) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    stored = load_file(os.path.join(unet_folder, "diffusion_pytorch_model.fp16.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    guide = load_guidance(GuidanceConfig(zero123_model=variant_model_dir), "cpu")
    assert guide.unet.dtype == torch.float32 and guide.image_encoder.dtype == torch.float32


@pytest.mark.cuda
def test_fp16_variant_files_are_used_on_cuda(variant_model_dir):
    guide = load_guidance(GuidanceConfig(zero123_model=variant_model_dir), "cuda")
    assert guide.unet.dtype == torch.float16 and guide.projection.proj.weight.dtype == torch.float16


def test_prepare_and_sds_on_the_real_sample(guide, minions_path):
    """The data loader's tensors go straight in: reference frames and anchors of two frames."""
    from stag4d.data.frames import load_frames

    data = load_frames(minions_path, ref_size=256, anchor_size=256, num_frames=2)
    guide.prepare(data.ref_rgb, data.anchor_rgb, generator=torch.Generator().manual_seed(0))
    assert guide.clip_embeds.shape == (2, 7, EMBED) and guide.cond_latents.shape == (2, 7, 4, 32, 32)
    images = data.ref_rgb.clone().requires_grad_(True)  # a "render" identical to the reference
    loss = guide.sds_loss(images, torch.tensor([0, 1]), torch.tensor([-1, 1]), torch.zeros(2), torch.zeros(2),
                          torch.zeros(2), step=0)
    loss.backward()
    assert torch.isfinite(loss) and images.grad.abs().sum() > 0
    ref, anchors = _frames()
    guide.prepare(ref, anchors, generator=torch.Generator().manual_seed(0))  # restore for later tests
