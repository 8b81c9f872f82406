"""Batched Zero123++ generation (gen_mv --batch-size): a frame denoised in a batch equals the frame
generated alone, with and without the temporal anchor; records on the device equal records on the host.

Tolerance of the comparisons (CPU, fp32). A batched frame draws exactly the random numbers it draws
alone (its own generator, same order and shapes) and its anchor blend is the same arithmetic, so the
only difference is the UNet computing a batch of 2N instead of 2: matrix products and convolutions
are blocked by shape and may round differently. Measured here: at most 5e-6 on float images in [0, 1]
(2 and 10 steps). The tests allow 1e-4 (20x that, 1/40 of an 8-bit level) and one 8-bit level on
the uint8 grids (a value next to a rounding boundary may land on either side). A batching mistake is
far larger: another frame's noise or seed moves pixels by up to 1.0, swapped guidance branches in
the anchor by 0.07, leaving the anchor out by 0.004 (measured on this tiny model at 2 steps).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_gen_mv import HEIGHT, STEPS, WIDTH, make_dataset, run_gen_mv, tiny_model  # noqa: F401  (fixture)

from stag4d.multiview import AnchorMismatch, TemporalAnchor, gen_mv
from stag4d.multiview.pipeline import (ATTENTION_KERNELS, attention_kernel, compile_unet_blocks, composite_on_gray,
                                      load_pipeline)
from stag4d.multiview.temporal_anchor import released_blend_tokens

FLOAT_TOLERANCE = 1e-4  # float images in [0, 1], CPU fp32: see the module docstring


@pytest.fixture(scope="module")
def pipe(tiny_model):  # noqa: F811
    return load_pipeline(tiny_model, device="cpu")


def frame(i: int, size: int = 40) -> np.ndarray:
    """uint8 RGB on grey: a disk that moves and changes colour with i."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - 12 - 3 * i) ** 2 + (yy - 20) ** 2 < 81
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[inside] = (200, 30 + 40 * i, 30, 255)
    return composite_on_gray(rgba)


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------
# the anchor on its own: a batch replays exactly what each frame replays alone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blend", ["own", "released"])
@pytest.mark.parametrize("own_tokens, reference_tokens, channels", [(5, 3, 4), (700, 20, 1280)])
def test_replay_of_a_batch_equals_replay_per_frame(blend, own_tokens, reference_tokens, channels):
    """Branch-major batch [uncond x3, cond x3]: frame b's rows get what frame b alone gets, bit for bit,
    with the record on the host or on the device (the CPU here) alike. (5, 3, 4): the released blend
    takes every token (reference too, as at the full-size mid-block); (700, 20, 1280): its 600
    tokens are part of the own tokens."""
    if blend == "released":
        assert (released_blend_tokens(channels) > own_tokens) == (channels == 4)
    tokens = own_tokens + reference_tokens
    kv0 = torch.randn(2, tokens, channels)
    frames = [torch.randn(2, tokens, channels) for _ in range(3)]  # [uncond, cond] of each frame
    batch = torch.cat([torch.stack([f[0] for f in frames]), torch.stack([f[1] for f in frames])])
    results = {}
    for storage in ("host", "device"):
        anchor = TemporalAnchor("record", pin_memory=False, blend=blend, storage=storage)
        anchor("layer", 0, kv0, own_tokens=own_tokens)
        anchor.set_mode("replay")
        alone = [anchor("layer", 0, f, own_tokens=own_tokens) for f in frames]
        batched = anchor("layer", 0, batch, own_tokens=own_tokens, frames=3)
        assert batched.shape == batch.shape
        for b, single in enumerate(alone):
            assert torch.equal(batched[b], single[0]) and torch.equal(batched[3 + b], single[1])
        assert not torch.equal(batched, batch)  # the blend did something
        results[storage] = batched
    assert torch.equal(results["host"], results["device"])


def test_device_records_are_copies_in_fp16():
    anchor = TemporalAnchor("record", storage="device")
    kv0 = torch.randn(1, 6, 4)
    anchor("layer", 0, kv0, own_tokens=4)
    own, _ = anchor.records[("layer", 0)]
    assert own.dtype == torch.float16 and own.device == kv0.device and own.is_contiguous()
    assert own.data_ptr() != kv0.data_ptr() and own._base is None  # not a view keeping kv0 alive
    assert torch.equal(anchor.recorded_kv("layer", 0), kv0.half())
    with pytest.raises(ValueError, match="storage"):
        TemporalAnchor(storage="gpu")


@pytest.mark.parametrize("blend", ["own", "released"])
def test_a_record_batch_stores_frame_zero_and_replays_the_others_at_once(blend):
    """Branch-major [uncond x3, cond x3] with frame 0 first in each branch: frame 0's rows pass
    through and are what frame 0 alone records; frames 1 and 2 get what they get replayed alone,
    bit for bit."""
    own_tokens, channels = 5, 4
    frames = [torch.randn(2, own_tokens + 3, channels) for _ in range(3)]
    batch = torch.cat([torch.stack([f[0] for f in frames]), torch.stack([f[1] for f in frames])])
    alone = TemporalAnchor("record", pin_memory=False, blend=blend)
    assert torch.equal(alone("layer", 0, frames[0], own_tokens=own_tokens), frames[0])
    alone.set_mode("replay")
    replayed = [alone("layer", 0, f, own_tokens=own_tokens) for f in frames[1:]]
    together = TemporalAnchor("record", pin_memory=False, blend=blend)
    out = together("layer", 0, batch, own_tokens=own_tokens, frames=3)
    assert out.shape == batch.shape
    assert torch.equal(together.recorded_kv("layer", 0), alone.recorded_kv("layer", 0))
    assert torch.equal(out[0], frames[0][0]) and torch.equal(out[3], frames[0][1])
    for b, single in enumerate(replayed, start=1):
        assert torch.equal(out[b], single[0]) and torch.equal(out[3 + b], single[1])
    assert not torch.equal(out, batch)


def test_anchor_refuses_batches_that_do_not_match_the_record():
    anchor = TemporalAnchor("record", pin_memory=False)
    with pytest.raises(AnchorMismatch):
        anchor("layer", 0, torch.randn(5, 7, 4), own_tokens=5, frames=2)  # 5 rows are not 2 frames x branches
    anchor("layer", 0, torch.randn(2, 7, 4), own_tokens=5)  # with guidance: [uncond, cond]
    anchor.set_mode("replay")
    with pytest.raises(AnchorMismatch):  # two frames without guidance against a record with guidance
        anchor("layer", 0, torch.randn(2, 7, 4), own_tokens=5, frames=2)
    with pytest.raises(AnchorMismatch):
        anchor("layer", 0, torch.randn(5, 7, 4), own_tokens=5, frames=2)
    assert anchor("layer", 0, torch.randn(6, 7, 4), own_tokens=5, frames=3).shape == (6, 7, 4)


# --------------------------------------------------------------------------------------------
# the pipeline: batched frames equal the frames alone
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blend, guidance", [("own", 4.0), ("released", 4.0), ("own", 1.0)])
def test_batched_frames_equal_frames_generated_alone(pipe, blend, guidance):
    """Frame 0 records; frames 1..5 replay one by one, then as a batch of 3 and a last partial
    batch of 2, each with its own seed (gen_mv gives them all --seed; distinct seeds show that each
    frame draws from its own generator)."""
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "guidance_scale": guidance, "output": "float"}
    anchor = TemporalAnchor("record", pin_memory=False, blend=blend)
    pipe(frame(0), anchor=anchor, seed=42, **kwargs)
    anchor.set_mode("replay")
    seeds = [42, 7, 42, 9, 42]
    alone = [pipe(frame(i), anchor=anchor, seed=seed, **kwargs) for i, seed in zip(range(1, 6), seeds)]
    batched = pipe.generate([frame(1), frame(2), frame(3)], anchor=anchor, seed=seeds[:3], **kwargs)
    batched += pipe.generate([frame(4), frame(5)], anchor=anchor, seed=seeds[3:], **kwargs)
    assert all(grid.shape == (HEIGHT, WIDTH, 3) and grid.dtype == np.float32 for grid in batched)
    assert max_difference(batched, alone) < FLOAT_TOLERANCE
    # the tolerance is far below what a batching mistake makes: neighbouring frames differ by more
    assert min(float(np.abs(alone[k] - alone[k + 1]).max()) for k in range(4)) > 30 * FLOAT_TOLERANCE

    # the uint8 grids gen_mv writes: at most one 8-bit level apart, on few pixels
    kwargs["output"] = "uint8"
    alone8 = [pipe(frame(i), anchor=anchor, seed=seed, **kwargs) for i, seed in zip((4, 5), seeds[3:])]
    batched8 = pipe.generate([frame(4), frame(5)], anchor=anchor, seed=seeds[3:], **kwargs)
    assert max_difference(batched8, alone8) <= 1
    assert np.mean([np.mean(a != b) for a, b in zip(alone8, batched8)]) < 0.01


def test_one_frame_batch_is_the_plain_call(pipe):
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "seed": 3}
    [grid] = pipe.generate([frame(1)], **kwargs)
    assert np.array_equal(grid, pipe(frame(1), **kwargs))


@pytest.mark.parametrize("blend", ["own", "released"])
def test_frame_zero_recorded_in_a_batch_equals_frame_zero_recorded_alone(pipe, blend):
    """[frame 0, 1, 2] in one 'record' batch against frame 0 alone then [1, 2] replayed: the same
    frames and records to float rounding, and a later frame replayed from either record alike."""
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "guidance_scale": 4.0, "output": "float"}
    alone = TemporalAnchor("record", pin_memory=False, blend=blend)
    two_passes = pipe.generate([frame(0)], anchor=alone, seed=42, **kwargs)
    alone.set_mode("replay")
    two_passes += pipe.generate([frame(1), frame(2)], anchor=alone, seed=[7, 9], **kwargs)
    together = TemporalAnchor("record", pin_memory=False, blend=blend)
    one_pass = pipe.generate([frame(0), frame(1), frame(2)], anchor=together, seed=[42, 7, 9], **kwargs)
    assert max_difference(one_pass, two_passes) < FLOAT_TOLERANCE
    assert alone.records.keys() == together.records.keys()
    assert max(float((alone.recorded_kv(*key).float() - together.recorded_kv(*key).float()).abs().max())
               for key in alone.records) < 1e-2  # fp16 records: one fp16 step (0.002) measured, 5 allowed
    together.set_mode("replay")
    later = [pipe.generate([frame(3)], anchor=anchor, seed=5, **kwargs)[0] for anchor in (alone, together)]
    assert max_difference(later[:1], later[1:]) < FLOAT_TOLERANCE
    # the tolerance is far below what leaving the anchor out of frames 1 and 2 does
    plain = pipe.generate([frame(1), frame(2)], seed=[7, 9], **kwargs)
    assert max_difference(plain, one_pass[1:]) > 10 * FLOAT_TOLERANCE


def test_a_batch_needs_a_seed_per_frame(pipe):
    with pytest.raises(ValueError, match="seeds"):
        pipe.generate([frame(0), frame(1)], steps=STEPS, width=WIDTH, height=HEIGHT, seed=[1, 2, 3])


def test_released_randomness_draws_unseeded_noise_per_frame(pipe):
    """--randomness released: the condition latents and the reference noise come from torch's global
    RNG, one draw per frame, so two copies of a frame in one batch get different noise there (and
    the same seeded initial latents and sampler noise); with seeded randomness they are the same."""
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "seed": 5, "output": "float"}
    seeded = pipe.generate([frame(1), frame(1)], **kwargs)
    assert float(np.abs(seeded[0] - seeded[1]).max()) < FLOAT_TOLERANCE
    torch.manual_seed(0)
    released = pipe.generate([frame(1), frame(1)], randomness="released", **kwargs)
    assert float(np.abs(released[0] - released[1]).max()) > 30 * FLOAT_TOLERANCE
    torch.manual_seed(0)
    again = pipe.generate([frame(1), frame(1)], randomness="released", **kwargs)
    assert max_difference(again, released) < FLOAT_TOLERANCE  # the global RNG decides, nothing else


# --------------------------------------------------------------------------------------------
# gen_mv
# --------------------------------------------------------------------------------------------


def test_batches_are_groups_of_the_size_in_run_order():
    run = [(i, f"{i}.png") for i in range(6)]
    assert [[i for i, _ in b] for b in gen_mv.batches(run, 3)] == [[0, 1, 2], [3, 4, 5]]
    assert [[i for i, _ in b] for b in gen_mv.batches(run, 4)] == [[0, 1, 2, 3], [4, 5]]
    assert [[i for i, _ in b] for b in gen_mv.batches(run, 1)] == [[i] for i in range(6)]
    assert gen_mv.batches(run[:1], 8) == [run[:1]]
    assert gen_mv.batches([], 8) == []


def test_batch_size_below_one_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gen_mv.main(["--path", str(tmp_path), "--batch-size", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size 0" in err and "\n" not in err


def test_anchor_records_choice():
    args = SimpleNamespace(width=WIDTH, height=HEIGHT, steps=STEPS, guidance=4.0)
    on_cpu = SimpleNamespace(device=torch.device("cpu"))
    assert gen_mv.anchor_storage("auto", on_cpu, args, 8) == "host"  # one memory on the CPU
    assert gen_mv.anchor_storage("device", on_cpu, args, 8) == "device"
    assert gen_mv.parse_args(["--path", "x"]).anchor_records == "auto"


def spy_on_saved_grids(monkeypatch) -> dict[int, np.ndarray]:
    saved: dict[int, np.ndarray] = {}
    save_views = gen_mv.save_views

    def spy(path, i, grid, tile, method):
        saved[i] = grid.copy()
        save_views(path, i, grid, tile, method)

    monkeypatch.setattr(gen_mv, "save_views", spy)
    return saved


def mtimes(path: str, frames: int) -> dict[str, int]:
    """Modification times of the views that exist."""
    return {file: os.stat(file).st_mtime_ns for i in range(frames) for file in gen_mv.view_files(path, i)
            if os.path.isfile(file)}


@pytest.mark.slow
def test_gen_mv_batches_equal_one_by_one_and_resume(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    """5 frames: batch 1 against batch 3 (frame 0 recording with frames 1 and 2, then frames 3 and
    4), uint8 grids at most one level apart; then a resumed run (views of frames 2 and 4 missing)
    records frame 0 again in one batch with 2 and 4 and writes only those."""
    path = make_dataset(tmp_path, frames=5)
    saved = spy_on_saved_grids(monkeypatch)
    assert run_gen_mv(path, tiny_model, "--batch-size", "1") == 0
    one_by_one = dict(saved)
    saved.clear()
    assert run_gen_mv(path, tiny_model, "--batch-size", "3", "--overwrite") == 0
    assert "batches of 3" in capsys.readouterr().out
    assert sorted(saved) == list(range(5))
    for i in range(5):
        difference = np.abs(saved[i].astype(int) - one_by_one[i])
        assert difference.max() <= 1 and np.mean(difference > 0) < 0.01, i
    batched = dict(saved)

    for i in (2, 4):
        os.remove(gen_mv.view_files(path, i)[1])
    before = mtimes(path, 5)
    saved.clear()
    assert run_gen_mv(path, tiny_model, "--batch-size", "3") == 0
    assert sorted(saved) == [2, 4]  # frame 0 was generated again (to record) but not written
    for i in (2, 4):
        assert np.abs(saved[i].astype(int) - batched[i]).max() <= 1
        with Image.open(gen_mv.view_files(path, i)[1]) as image:
            assert image.mode == "RGBA"
    after = mtimes(path, 5)
    assert all(after[f] == before[f] for f in before if "/2_rgba/" not in f and "/4_rgba/" not in f)

    # without the anchor frame 0 is batched with the others; it is not anchored to anything
    saved.clear()
    assert run_gen_mv(path, tiny_model, "--batch-size", "3", "--overwrite", "--no-temporal-anchor") == 0
    assert sorted(saved) == list(range(5))
    assert np.abs(saved[0].astype(int) - one_by_one[0]).max() <= 1


# --------------------------------------------------------------------------------------------
# the same on the GPU
# --------------------------------------------------------------------------------------------

# Float images in [0, 1]. fp32 with TF32 off: only the blocking of the products changes with the
# batch (CPU: 5e-6), 1e-3 leaves room for cuBLAS / cuDNN picking split reductions by shape. fp16 (what
# gen_mv runs on CUDA): a product rounded differently moves an activation by one fp16 step (2^-11
# relative) and that carries through the steps and the fp16 VAE; 2e-2 is five 8-bit levels. The
# measured values are printed (pytest -s).
CUDA_TOLERANCES = {torch.float32: 1e-3, torch.float16: 2e-2}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_batched_frames_equal_frames_alone_on_cuda(tiny_model, dtype, monkeypatch):  # noqa: F811
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    pipe = load_pipeline(tiny_model, device="cuda", dtype=dtype)
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "output": "float"}
    results = {}
    for storage in ("device", "host"):
        anchor = TemporalAnchor("record", blend="own", storage=storage)
        frame0 = pipe(frame(0), anchor=anchor, **kwargs)
        anchor.set_mode("replay")
        alone = [pipe(frame(i), anchor=anchor, **kwargs) for i in range(1, 6)]
        batched = pipe.generate([frame(i) for i in (1, 2, 3)], anchor=anchor, **kwargs)
        batched += pipe.generate([frame(i) for i in (4, 5)], anchor=anchor, **kwargs)
        records = anchor.records[next(iter(anchor.records))][0]
        assert records.is_cuda == (storage == "device") and (storage == "device" or records.is_pinned())
        difference = max_difference(batched, alone)
        print(f"\n{dtype} records on the {storage}: batched vs alone, max |difference| {difference:.2e}")
        assert difference < CUDA_TOLERANCES[dtype]
        results[storage] = [frame0] + alone + batched
    # the same records wherever they live: the same frames, bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(results["device"], results["host"]))


@pytest.mark.cuda
def test_gen_mv_batches_on_cuda(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    """gen_mv's CUDA defaults (fp16, batch 8, records on the GPU) against batch 1 with host records."""
    path = make_dataset(tmp_path, frames=5)
    saved = spy_on_saved_grids(monkeypatch)
    assert run_gen_mv(path, tiny_model, "--batch-size", "1", "--anchor-records", "host", device="cuda") == 0
    assert "in CPU memory" in capsys.readouterr().out
    one_by_one = dict(saved)
    assert run_gen_mv(path, tiny_model, "--overwrite", device="cuda") == 0
    out = capsys.readouterr().out
    assert "batches of 8" in out and "on the GPU" in out
    levels = max(int(np.abs(saved[i].astype(int) - one_by_one[i]).max()) for i in range(5))
    print(f"\ngen_mv fp16 batch 8 (frame 0 recording in it) vs batch 1: at most {levels} 8-bit levels apart")
    assert levels <= 255 * CUDA_TOLERANCES[torch.float16] + 1


def test_gen_mv_speed_options_are_inert_on_the_cpu(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    path = make_dataset(tmp_path, frames=2)
    saved = spy_on_saved_grids(monkeypatch)
    assert run_gen_mv(path, tiny_model) == 0
    plain = dict(saved)
    assert run_gen_mv(path, tiny_model, "--overwrite", "--compile", "--channels-last") == 0
    assert "UNet" not in capsys.readouterr().out
    assert all(np.array_equal(saved[i], plain[i]) for i in range(2))


@pytest.mark.cuda
def test_gen_mv_compiled_unet_on_cuda(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    """gen_mv --compile --channels-last against the plain run: the same views within the fp16 batch
    tolerance; the warm-up step leaves the frames' draws alone (a shifted draw would differ by O(1))."""
    path = make_dataset(tmp_path, frames=5)
    saved = spy_on_saved_grids(monkeypatch)
    assert run_gen_mv(path, tiny_model, device="cuda") == 0
    plain = dict(saved)
    capsys.readouterr()
    assert run_gen_mv(path, tiny_model, "--overwrite", "--compile", "--channels-last", device="cuda") == 0
    assert "UNet channels-last and compiled in" in capsys.readouterr().out
    levels = max(int(np.abs(saved[i].astype(int) - plain[i]).max()) for i in range(5))
    print(f"\ngen_mv --compile --channels-last vs plain, fp16: at most {levels} 8-bit levels apart")
    assert levels <= 255 * CUDA_TOLERANCES[torch.float16] + 1


def attention_inputs(device: str, dtype: torch.dtype, tokens: int = 96, keys: int = 160, head: int = 64):
    """(q, k, v) [2, 5, L, 64]: Zero123++'s top-level self-attention layout (5 heads of 64), the key
    input longer than the query (own + reference tokens) as in reference attention."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, n, head, generator=generator) for n in (tokens, keys, keys))
    return tuple(x.to(device, dtype) for x in (q, k, v))


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS)
def test_attention_kernel_computes_the_same_attention(kernel):
    """pipeline.attention_kernel (benchmarks/bench_zero123pp.py --unet-options): each choice is the
    same attention (on the CPU the kernels PyTorch has there: a CUDA-only kernel put first is passed
    over)."""
    q, k, v = attention_inputs("cpu", torch.float32)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with attention_kernel(kernel):
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(got, expected, atol=1e-5)


def test_unknown_attention_kernel_is_refused():
    with pytest.raises(ValueError, match="cudnn"):
        attention_kernel("fast")


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", [k for k in ATTENTION_KERNELS if k not in ("auto", "math")])
def test_attention_kernels_on_cuda(tiny_model, kernel, capsys):  # noqa: F811
    """Each kernel that attention_kernel can put first takes Zero123++'s fp16 attention shapes by
    itself (no fallback), agrees with fp32 attention to fp16 rounding (2e-3 on outputs of size ~0.1-1:
    a few fp16 steps), and Zero123++'s frames with it stay within the fp16 batch tolerance of the
    default kernel's (H200, PyTorch 2.11: cuDNN 0, flash 1.25e-2, memory-efficient 1.20e-2)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = attention_inputs("cuda", torch.float16)
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    only = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}[kernel]
    with sdpa_kernel(only):  # raises if this kernel cannot take the shapes
        alone = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert float((alone.float() - reference).abs().max()) < 2e-3
    pipe = load_pipeline(tiny_model, device="cuda", dtype=torch.float16)
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "output": "float"}
    frames = [frame(i) for i in range(3)]
    default = pipe.generate(frames, **kwargs)
    with attention_kernel(kernel):
        chosen = pipe.generate(frames, **kwargs)
    difference = max_difference(chosen, default)
    print(f"\n{kernel} attention vs the default kernel, fp16 frames: max |difference| {difference:.2e}")
    assert difference < CUDA_TOLERANCES[torch.float16]


def test_compile_unet_blocks_compiles_the_resnet_and_feed_forward_blocks_only(tiny_model):  # noqa: F811
    """pipeline.compile_unet_blocks (benchmarks/bench_zero123pp.py --unet-options): the ResNet blocks
    and feed-forward layers get a compiled call (torch.compile is lazy: nothing compiles here), the
    attention layers, which carry the reference attention and the temporal anchor, do not; and
    compile=False gives every block its eager call back."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    unet = load_pipeline(tiny_model, device="cpu").unet
    blocks = compile_unet_blocks(unet)
    kinds = {type(b) for b in blocks}
    assert kinds == {ResnetBlock2D, FeedForward} and len(blocks) > 2
    compiled = {id(m) for m in unet.modules() if m._compiled_call_impl is not None}
    assert compiled == {id(b) for b in blocks}
    compile_unet_blocks(unet, compile=False)
    assert all(m._compiled_call_impl is None for m in unet.modules())


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_compiled_unet_blocks_give_the_frames_of_the_eager_ones_cuda(tiny_model, channels_last):  # noqa: F811
    """Zero123++ with its ResNet blocks and feed-forward layers compiled, fp16, frame 0 recording the
    temporal anchor and two frames replaying it: the frames of the eager UNet within the fp16 batch
    tolerance (inductor's fused kernels round differently; a wrong block would differ by O(1))."""
    pipe = load_pipeline(tiny_model, device="cuda", dtype=torch.float16)
    kwargs = {"steps": STEPS, "width": WIDTH, "height": HEIGHT, "output": "float"}

    def frames():
        anchor = TemporalAnchor("record", blend="own", storage="device")
        result = pipe.generate([frame(0), frame(1), frame(2)], anchor=anchor, **kwargs)
        anchor.set_mode("replay")
        return result + pipe.generate([frame(3), frame(4), frame(5)], anchor=anchor, **kwargs)

    eager = frames()
    pipe.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    compile_unet_blocks(pipe.unet)
    try:
        compiled = frames()
    finally:
        compile_unet_blocks(pipe.unet, compile=False)
    difference = max_difference(compiled, eager)
    print(f"\ncompiled blocks ({'channels-last' if channels_last else 'contiguous'}) vs eager, fp16 frames: "
          f"max |difference| {difference:.2e}")
    assert difference < CUDA_TOLERANCES[torch.float16]


def test_errors_of_the_worker_threads_end_gen_mv_in_one_line(tmp_path, tiny_model, monkeypatch, capsys):  # noqa: F811
    """Reading frames and writing views run on worker threads: their errors still end the run with
    one line, and the views generated before are written."""
    path = make_dataset(tmp_path, frames=4)
    with open(os.path.join(path, "ref", "3_rgba.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(SystemExit) as exit_info:
        run_gen_mv(path, tiny_model, "--batch-size", "2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars
    assert err.startswith("error: ") and "3_rgba.png cannot be read" in err
    # batches [0, 1] and [2, 3]: the first was generated and written, the one that needs frame 3 was not
    assert [gen_mv.has_views(path, i) for i in range(4)] == [True, True, False, False]

    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(os.path.join(path, "ref", "3_rgba.png"))
    save_views = gen_mv.save_views

    def full_disk(path_, i, grid, tile, method):
        if i == 1:
            raise gen_mv.UserError("the disk is full: could not write a view")
        save_views(path_, i, grid, tile, method)

    monkeypatch.setattr(gen_mv, "save_views", full_disk)
    with pytest.raises(SystemExit):
        run_gen_mv(path, tiny_model, "--batch-size", "2", "--overwrite")
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: the disk is full: could not write a view"
