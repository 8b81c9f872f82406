"""STAG4D's temporal anchor: the mechanism in every self-attention call, and model loading errors."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from stag4d.errors import ModelUnavailable
from stag4d.multiview import AnchorMismatch, TemporalAnchor, record_bytes
from stag4d.multiview.pipeline import composite_on_gray, load_pipeline
from stag4d.multiview.random_model import save_model_folder
from stag4d.multiview.temporal_anchor import PinnedArena

WIDTH, HEIGHT, STEPS = 32, 48, 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model_folder(str(tmp_path_factory.mktemp("zero123pp") / "model"))


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return load_pipeline(tiny_model, device="cpu")


def frame(i: int, size: int = 40) -> np.ndarray:
    """uint8 RGB on grey: a disk that moves and changes colour with i."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - 14 - 4 * i) ** 2 + (yy - 20) ** 2 < 81
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[inside] = (200, 40 + 80 * i, 30, 255)
    return composite_on_gray(rgba)


class Spy:
    """Stands in for a processor's attention computation and keeps what it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []  # (query input [B, L, C], key/value input [B, L', C])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        kv = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        self.calls.append((hidden_states.clone(), kv.clone()))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def spy_on_self_attention(pipe):
    spies = {}
    for name, processor in pipe.processors.items():
        if processor.enabled:
            spies[name] = processor.inner = Spy(processor.inner)
    return spies


def main_pass_calls(spy):
    """Per step (query input, key/value input) of the main pass: the calls whose kv is longer than the query."""
    return [(q, kv) for q, kv in spy.calls if kv.shape[1] > q.shape[1]]


def reference_pass_calls(spy):
    return [(q, kv) for q, kv in spy.calls if kv.shape[1] == q.shape[1]]


# --------------------------------------------------------------------------------------------
# the anchor object on its own
# --------------------------------------------------------------------------------------------


def test_record_then_replay_blends_own_tokens_only():
    anchor = TemporalAnchor("record", pin_memory=False)
    kv0 = torch.randn(2, 7, 4)
    assert anchor("layer", 0, kv0, own_tokens=5) is kv0
    own, reference = anchor.records[("layer", 0)]
    assert own.shape == (2, 5, 4) and reference.shape == (2, 2, 4)
    assert own.dtype == torch.float16 and own.device.type == "cpu" and own.is_contiguous()
    assert torch.equal(anchor.recorded_kv("layer", 0), kv0.half())
    assert anchor.nbytes == 2 * 7 * 4 * 2

    anchor.set_mode("replay")
    kv1 = torch.randn(2, 7, 4)
    out = anchor("layer", 0, kv1, own_tokens=5)
    expected_own = (kv1[:, :5] + kv0[:, :5].half().float()) / 2
    assert torch.equal(out[:, :5], expected_own)
    assert torch.equal(out[:, 5:], kv1[:, 5:])
    # batch element b is blended with recorded element b (uncond with uncond, cond with cond)
    assert torch.equal(out[1, :5], (kv1[1, :5] + kv0[1, :5].half().float()) / 2)


def test_replay_refuses_what_frame_zero_did_not_record():
    anchor = TemporalAnchor("record", pin_memory=False)
    anchor("layer", 0, torch.randn(2, 7, 4), own_tokens=5)
    with pytest.raises(AnchorMismatch):
        anchor("layer", 0, torch.randn(2, 7, 4), own_tokens=5)  # recorded twice
    anchor.set_mode("replay")
    with pytest.raises(AnchorMismatch):
        anchor("layer", 1, torch.randn(2, 7, 4), own_tokens=5)  # more steps than frame 0
    with pytest.raises(AnchorMismatch):
        anchor("layer", 0, torch.randn(2, 9, 4), own_tokens=7)  # another output size
    with pytest.raises(AnchorMismatch):
        anchor("layer", 0, torch.randn(1, 7, 4), own_tokens=5)  # guidance switched off
    anchor.set_mode("off")
    kv = torch.randn(2, 9, 4)
    assert anchor("other", 3, kv, own_tokens=2) is kv
    with pytest.raises(ValueError):
        anchor.set_mode("replay_all")


def test_arena_carves_aligned_non_overlapping_views():
    arena = PinnedArena(slab_bytes=1024, align=64, pin_memory=False)
    a = arena.take((3, 5), torch.float16)  # 30 bytes
    b = arena.take((2, 100), torch.float32)  # 800 bytes, same slab
    c = arena.take((100,), torch.float16)  # 200 bytes: does not fit, next slab
    big = arena.take((600,), torch.float32)  # larger than a slab: its own tensor
    assert len(arena.slabs) == 2 and arena.reserved_bytes == 2048
    a.fill_(1.0), b.fill_(2.0), c.fill_(3.0), big.fill_(4.0)
    assert a.shape == (3, 5) and a.dtype == torch.float16 and bool((a == 1).all())
    assert bool((b == 2).all()) and bool((c == 3).all()) and big.shape == (600,)
    assert b.data_ptr() - a.data_ptr() == 64 and c.data_ptr() == arena.slabs[1].data_ptr()


@pytest.mark.cuda
def test_pinned_records_from_the_gpu_replay_exactly():
    anchor = TemporalAnchor("record", pin_memory=True)
    kv0 = torch.randn(2, 300, 64, device="cuda", dtype=torch.float16)
    anchor("layer", 0, kv0, own_tokens=200)
    anchor.set_mode("replay")
    kv1 = torch.randn(2, 300, 64, device="cuda", dtype=torch.float16)
    out = anchor("layer", 0, kv1, own_tokens=200)
    assert anchor.records[("layer", 0)][0].is_pinned()
    assert torch.equal(out[:, :200], (kv1[:, :200] + kv0[:, :200]) / 2)
    assert torch.equal(out[:, 200:], kv1[:, 200:])


# --------------------------------------------------------------------------------------------
# the mechanism inside the pipeline
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_replay_blends_every_self_attention_call_of_every_step(pipe):
    anchor = TemporalAnchor("record", pin_memory=False)
    spies = spy_on_self_attention(pipe)
    try:
        pipe(frame(0), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=anchor)
        frame0 = {name: main_pass_calls(spy) for name, spy in spies.items()}
        for spy in spies.values():
            spy.calls.clear()
        anchor.set_mode("replay")
        pipe(frame(1), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=anchor)
    finally:
        for processor in pipe.processors.values():
            if isinstance(processor.inner, Spy):
                processor.inner = processor.inner.inner

    assert len(spies) == 4  # tiny UNet: down (1), mid (1), up (2) self-attentions
    assert len(anchor) == len(spies) * STEPS
    own_counts = set()
    for name, spy in spies.items():
        main, reference = main_pass_calls(spy), reference_pass_calls(spy)
        assert len(main) == len(reference) == STEPS
        for step, ((query, kv), (_, ref_kv), (_, kv0)) in enumerate(zip(main, reference, frame0[name])):
            own = query.shape[1]  # L from the hidden states
            own_counts.add(own)
            recorded = anchor.recorded_kv(name, step)
            assert anchor.records[(name, step)][0].shape[1] == own and query.shape[0] == 2  # [uncond, cond]
            # frame 0 recorded its key/value input: own tokens then reference tokens, in fp16
            assert torch.equal(recorded, kv0.half())
            # frame 1: own part = mean of its own tokens and frame 0's, reference part untouched
            assert torch.equal(kv[:, :own], (query + recorded[:, :own].float()) / 2)
            assert torch.equal(kv[:, own:], ref_kv)
            assert ref_kv.shape[1] != own  # the reference latent has another size than the output
            assert not torch.equal(kv[:, :own], query)
    assert len(own_counts) == 2  # two resolutions: L is taken per layer
    # memory formula = measured
    assert anchor.nbytes == record_bytes(
        dict(pipe.unet.config), (HEIGHT // 2, WIDTH // 2), (8, 8), STEPS, batch=2, bytes_per_value=2
    )


@pytest.mark.slow
def test_anchor_off_equals_generating_the_frame_alone(pipe, tiny_model):
    off = TemporalAnchor("off")
    pipe(frame(0), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=off)
    after_frame0 = pipe(frame(1), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=off)
    alone = load_pipeline(tiny_model, device="cpu")(frame(1), steps=STEPS, width=WIDTH, height=HEIGHT)
    assert len(off) == 0
    assert np.array_equal(after_frame0, alone)

    anchor = TemporalAnchor("record", pin_memory=False)
    pipe(frame(0), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=anchor)
    anchor.set_mode("replay")
    anchored = pipe(frame(1), steps=STEPS, width=WIDTH, height=HEIGHT, anchor=anchor)
    assert not np.array_equal(anchored, alone)


# --------------------------------------------------------------------------------------------
# loading errors
# --------------------------------------------------------------------------------------------


def test_missing_model_folder_is_model_unavailable(tmp_path):
    missing = str(tmp_path / "zero123plus-v1.1")
    with pytest.raises(ModelUnavailable) as info:
        load_pipeline(missing)
    assert missing in str(info.value) and "--model" in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="model_index.json"):
        load_pipeline(str(empty))


def test_unreachable_hub_id_is_model_unavailable(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailable) as info:
        load_pipeline("sudo-ai/zero123plus-v1.1-not-cached")
    assert "sudo-ai/zero123plus-v1.1-not-cached" in str(info.value)


def test_broken_component_names_the_component(tmp_path, tiny_model):
    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(tiny_model, broken)
    os.remove(os.path.join(broken, "unet", "config.json"))
    with pytest.raises(ModelUnavailable, match="unet"):
        load_pipeline(broken)
