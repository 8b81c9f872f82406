"""scripts/gen_mv.py and the Zero123++ pipeline on a tiny random model of the real classes (CPU)."""
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import pytest
from PIL import Image

from cam_utils import tile_box
from stag4d.multiview import gen_mv
from stag4d.multiview.pipeline import ImagePreprocess, composite_on_gray, load_pipeline
from stag4d.multiview.random_model import TINY_CONFIGS, preprocessor_config, save_model_folder

WIDTH, HEIGHT, STEPS = 32, 48, 2  # grid of 16x16 tiles; the real one is 640x960 with 75 steps


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model_folder(str(tmp_path_factory.mktemp("zero123pp") / "model"))


def disk_frame(i: int, size: int = 40) -> np.ndarray:
    """uint8 RGBA [size, size, 4]: a coloured disk moving right with i, on a transparent background."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - 14 - 3 * i) ** 2 + (yy - 20) ** 2 < 81
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[inside] = (200, 40 + 50 * i, 30, 255)
    return rgba


def make_dataset(root, frames: int = 3, top_level: bool = False) -> str:
    folder = root / "toy"
    target = folder if top_level else folder / "ref"
    target.mkdir(parents=True)
    for i in range(frames):
        name = f"{i}.png" if top_level else f"{i}_rgba.png"
        Image.fromarray(disk_frame(i)).save(target / name)
    return str(folder)


def run_gen_mv(path, model, *extra, device="cpu"):
    argv = ["--path", path, "--model", model, "--device", device, "--steps", str(STEPS), "--matting", "color",
            "--width", str(WIDTH), "--height", str(HEIGHT), *extra]
    return gen_mv.main(argv)


def view_bytes(path, frames=3):
    out = {}
    for i in range(frames):
        for file in gen_mv.view_files(path, i):
            with open(file, "rb") as f:
                out[file] = (f.read(), os.stat(file).st_mtime_ns)
    return out


@pytest.mark.slow
def test_gen_mv_writes_skips_overwrites_and_reproduces(tmp_path, tiny_model, capsys):
    path = make_dataset(tmp_path, top_level=True)
    assert run_gen_mv(path, tiny_model) == 0
    # frames given directly were copied into ref/
    assert sorted(os.listdir(os.path.join(path, "ref"))) == ["0_rgba.png", "1_rgba.png", "2_rgba.png"]
    for i in range(3):
        assert sorted(os.listdir(os.path.join(path, "zero123", f"{i}_rgba"))) == [f"{k}.png" for k in range(6)]
        for file in gen_mv.view_files(path, i):
            with Image.open(file) as image:
                assert image.mode == "RGBA" and image.size == (WIDTH // 2, WIDTH // 2)
    first = view_bytes(path)

    # everything exists: nothing is touched
    capsys.readouterr()
    assert run_gen_mv(path, tiny_model) == 0
    assert "all 3 frames" in capsys.readouterr().out
    assert view_bytes(path) == first

    # one view of frame 2 missing: frame 0 is generated again only to record the anchor (its files
    # stay as they are), frame 2 is regenerated, bit-identical to the first run
    os.remove(gen_mv.view_files(path, 2)[3])
    assert run_gen_mv(path, tiny_model) == 0
    again = view_bytes(path)
    for file, (data, mtime) in again.items():
        assert data == first[file][0]
        if "/2_rgba/" in file:
            assert mtime != first[file][1]
        else:
            assert mtime == first[file][1]

    # --overwrite: every file rewritten, same bytes (same seed -> same output)
    assert run_gen_mv(path, tiny_model, "--overwrite") == 0
    rewritten = view_bytes(path)
    assert all(rewritten[f][0] == first[f][0] and rewritten[f][1] != again[f][1] for f in first)

    # another seed changes the output (the comparison above can fail)
    assert run_gen_mv(path, tiny_model, "--overwrite", "--seed", "7") == 0
    assert any(view_bytes(path)[f][0] != first[f][0] for f in first)


def test_into_a_log_gen_mv_prints_a_line_a_batch_and_no_bars(tmp_path, tiny_model, capsys):
    """stderr is not a terminal here (as in video_to_4d's gen_mv.log): no carriage-return bars, ours
    or the model libraries' ("Loading weights" of every transformers model), one line a batch."""
    path = make_dataset(tmp_path)
    assert run_gen_mv(path, tiny_model, "--batch-size", "2") == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "Loading weights" not in captured.err
    assert re.search(r"zero123\+\+: 2/3 frames in [0-9.]+ s\nzero123\+\+: 3/3 frames in", captured.out)


def test_same_seed_is_bit_identical_and_grid_has_output_size(tiny_model):
    pipe = load_pipeline(tiny_model, device="cpu")
    rgb = composite_on_gray(disk_frame(0))
    a = pipe(rgb, steps=STEPS, width=WIDTH, height=HEIGHT, seed=42)
    b = pipe(rgb, steps=STEPS, width=WIDTH, height=HEIGHT, seed=42)
    c = pipe(rgb, steps=STEPS, width=WIDTH, height=HEIGHT, seed=43)
    assert a.shape == (HEIGHT, WIDTH, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_loading_reports_each_component_and_leaves_torch_as_it_was(tiny_model):
    pipe = load_pipeline(tiny_model, device="cpu")
    assert list(pipe.load_seconds) == ["vae", "unet", "text_encoder", "vision_encoder"]
    assert all(seconds >= 0 for seconds in pipe.load_seconds.values())
    # the loaders patch torch while they build (default dtype, empty-weight init); none of it may stay
    assert torch.get_default_dtype() == torch.float32
    layer = torch.nn.Linear(2, 2)
    assert layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32


def test_split_grid_follows_tile_box():
    tile = 4
    grid = np.zeros((3 * tile, 2 * tile, 3), dtype=np.uint8)
    for k in range(6):
        top, left, bottom, right = tile_box(k, tile)
        grid[top:bottom, left:right] = k * 10
    tiles = gen_mv.split_grid(grid, tile)
    assert [int(t[0, 0, 0]) for t in tiles] == [0, 10, 20, 30, 40, 50]
    assert all(t.shape == (tile, tile, 3) for t in tiles)
    # tile 1 is the top right one, tile 2 the left one of the second row
    assert np.all(grid[:tile, tile:] == 10) and np.all(grid[tile:2 * tile, :tile] == 20)


def test_composite_on_gray_uses_zero123pp_grey():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 10, 255)
    rgba[0, 1] = (255, 255, 255, 0)
    rgba[1, 0] = (255, 255, 255, 128)
    rgb = composite_on_gray(rgba)
    assert tuple(rgb[0, 0]) == (255, 0, 10)
    assert tuple(rgb[0, 1]) == (127, 127, 127)
    assert tuple(rgb[1, 0]) == (191, 191, 191)


@pytest.mark.parametrize("name", ["feature_extractor_vae", "feature_extractor_clip"])
def test_preprocess_matches_clip_image_processor(name):
    """Our PIL preprocessing equals transformers' CLIPImageProcessor on the same config."""
    transformers = pytest.importorskip("transformers")
    config = preprocessor_config({**TINY_CONFIGS[name], "size": 24})
    settings = {k: v for k, v in config.items() if k != "image_processor_type"}
    reference = transformers.CLIPImageProcessor(**settings)
    rgb = (np.random.RandomState(1).rand(40, 40, 3) * 255).astype(np.uint8)
    expected = reference(images=Image.fromarray(rgb), return_tensors="pt").pixel_values
    ours = ImagePreprocess.from_config(config)(rgb)
    assert ours.shape == expected.shape == (1, 3, 24, 24)
    assert float((ours - expected).abs().max()) < 2.0 / 255.0 / min(ImagePreprocess.from_config(config).std)


def test_vae_preprocess_is_zero123pp_image_scaling():
    """mean 0.5 / std 0.8 of the VAE view is images' = images * 0.5 / 0.8 of the [-1, 1] image."""
    pre = ImagePreprocess.from_config(preprocessor_config({**TINY_CONFIGS["feature_extractor_vae"], "size": 4}))
    rgb = np.random.RandomState(2).randint(0, 256, (4, 4, 3)).astype(np.uint8)
    minus1_1 = rgb.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
    assert np.allclose(pre(rgb).numpy(), minus1_1 * 0.5 / 0.8, atol=1e-6)


def test_json_report_holds_the_timings_of_the_run(tmp_path, tiny_model):
    """``--json``: what benchmarks read instead of parsing the printed lines."""
    path = make_dataset(tmp_path, frames=2)
    report = tmp_path / "report.json"
    assert run_gen_mv(path, tiny_model, "--json", str(report), "--batch-size", "2") == 0
    timings = json.loads(report.read_text())
    assert timings["frames_written"] == timings["frames_generated"] == 2 and timings["batch_size"] == 2
    assert timings["steps"] == STEPS and timings["device"] == "cpu" and timings["peak_gpu_gib"] is None
    assert set(timings["load_parts_s"]) == {"vae", "unet", "text_encoder", "vision_encoder"}
    assert 0 < timings["generate_s"] and timings["s_per_frame"] == pytest.approx(timings["generate_s"] / 2)
    assert timings["load_s"] >= sum(timings["load_parts_s"].values()) > 0
    assert timings["anchor_records"]["count"] > 0 and timings["anchor_records"]["storage"] == "host"


def test_json_report_in_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    path = make_dataset(tmp_path, frames=1)
    with pytest.raises(SystemExit):
        run_gen_mv(path, "unused", "--json", str(tmp_path / "no_such_folder" / "report.json"))
    err = capsys.readouterr().err.strip()
    assert "--json" in err and "no_such_folder" in err and "\n" not in err


def test_bad_frame_name_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "toy"
    folder.mkdir()
    Image.fromarray(disk_frame(0)).save(folder / "frame_a.png")
    with pytest.raises(SystemExit) as exit_info:
        run_gen_mv(str(folder), "unused")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "frame_a.png" in err and "\n" not in err


def test_bad_grid_size_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gen_mv.main(["--path", str(tmp_path), "--width", "32", "--height", "40"])
    assert "--width 32 --height 40" in capsys.readouterr().err


def test_missing_model_is_reported_with_the_fix(tmp_path, capsys):
    path = make_dataset(tmp_path, frames=1)
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(SystemExit) as exit_info:
        run_gen_mv(path, missing)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert missing in err and "--model" in err


def test_frames_to_run_prepends_frame_zero_for_the_anchor():
    frames = [(0, "a"), (1, "b"), (2, "c")]
    assert gen_mv.frames_to_run(frames, {2}, anchored=True) == [(0, "a"), (2, "c")]
    assert gen_mv.frames_to_run(frames, {2}, anchored=False) == [(2, "c")]
    assert gen_mv.frames_to_run(frames, {0, 1}, anchored=True) == [(0, "a"), (1, "b")]


@pytest.mark.cuda
def test_gen_mv_on_cuda_reproduces_and_anchor_changes_later_frames(tmp_path, tiny_model, capsys):
    """fp16 on the GPU with pinned records: deterministic; frame 0 is the same with or without anchor."""
    path = make_dataset(tmp_path)
    assert run_gen_mv(path, tiny_model, device="cuda") == 0
    assert "temporal anchor:" in capsys.readouterr().out
    anchored = view_bytes(path)
    assert run_gen_mv(path, tiny_model, "--overwrite", device="cuda") == 0
    assert all(view_bytes(path)[f][0] == anchored[f][0] for f in anchored)
    # the same batches with and without the anchor (the three frames in one, frame 0 first): the anchor
    # passes frame 0's rows through untouched; another batch would round differently in fp16 (frame 0
    # alone against frame 0 with two others: tests/test_gen_mv_batch.py)
    assert run_gen_mv(path, tiny_model, "--overwrite", "--no-temporal-anchor", device="cuda") == 0
    plain = view_bytes(path)
    assert all(plain[f][0] == anchored[f][0] for f in anchored if "/0_rgba/" in f)
    assert any(plain[f][0] != anchored[f][0] for f in anchored if "/0_rgba/" not in f)
