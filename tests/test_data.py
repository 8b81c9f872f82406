import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from stag4d.data import matting
from stag4d.data.frames import FrameData, composite_and_resize, load_frames
from stag4d.errors import DataError, ModelUnavailable

SIZE = 32


def frame_rgba(i: int, size: int = SIZE) -> np.ndarray:
    """RGBA uint8 [size, size, 4]: red channel encodes the frame number, alpha is a soft disc."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(xx - size / 2 + 0.5, yy - size / 2 + 0.5)
    alpha = np.clip((size * 0.35 - radius) * 40, 0, 255)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 10 * i
    rgba[..., 1] = 100
    rgba[..., 2] = (xx * 255 // (size - 1))
    rgba[..., 3] = alpha
    return rgba


def make_dataset(root, num_frames=3, size=SIZE, anchors=True, anchor_size=24, views=6):
    ref = root / "ref"
    ref.mkdir(parents=True)
    for i in range(num_frames):
        Image.fromarray(frame_rgba(i, size)).save(ref / f"{i}_rgba.png")
        if anchors:
            folder = root / "zero123" / f"{i}_rgba"
            folder.mkdir(parents=True)
            for k in range(views):
                tile = frame_rgba(i, anchor_size)
                tile[..., 1] = 20 * k
                background = tile[..., 3] == 0
                tile[background] = [129, 128, 129, 1]  # like the sample: grey at alpha 1/255
                Image.fromarray(tile).save(folder / f"{k}.png")
    return root


def assert_data_error(path, fragment, **kwargs):
    with pytest.raises(DataError) as excinfo:
        load_frames(str(path), **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    assert fragment in message, message
    return message


def png16(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (colour type 0 grey, 4 grey+alpha, 2 RGB, 6 RGBA) written by hand."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# good input
# --------------------------------------------------------------------------------------------


def test_shapes_composite_on_white_and_soft_alpha(tmp_path):
    make_dataset(tmp_path, num_frames=3)
    data = load_frames(str(tmp_path), ref_size=SIZE, anchor_size=24)
    assert isinstance(data, FrameData) and data.num_frames == 3 and data.frame_ids == [0, 1, 2]
    assert data.ref_rgb.shape == (3, 3, SIZE, SIZE) and data.ref_rgb.dtype == torch.float32
    assert data.ref_mask.shape == (3, 1, SIZE, SIZE)
    assert data.anchor_rgb.shape == (3, 6, 3, 24, 24) and data.anchor_mask.shape == (3, 6, 1, 24, 24)
    assert data.path == str(tmp_path)

    rgba = torch.from_numpy(frame_rgba(2)).float() / 255.0
    alpha = rgba[..., 3]
    expected = rgba[..., :3] * alpha[..., None] + (1 - alpha[..., None])
    torch.testing.assert_close(data.ref_rgb[2], expected.permute(2, 0, 1))
    torch.testing.assert_close(data.ref_mask[2, 0], alpha)
    soft = (data.ref_mask > 0.05) & (data.ref_mask < 0.95)
    assert soft.any()  # alpha is not thresholded
    assert data.ref_rgb[:, :, 0, 0].eq(1.0).all()  # corners are background: white

    # Anchors: background alpha 1/255 stays soft (not 0) and composites to almost white.
    background = data.anchor_mask[:, :, :, 0, 0]
    torch.testing.assert_close(background, torch.full_like(background, 1 / 255))
    assert (data.anchor_rgb[:, :, :, 0, 0] > 0.99).all()
    assert data.anchor_rgb[0, 3, 1, 12, 12] == pytest.approx(60 / 255, abs=1e-6)  # view k = 3 kept its order


def test_resize_is_premultiplied_and_bounded(tmp_path):
    # The colour under transparent pixels must not bleed into the result.
    rgba = torch.zeros(16, 16, 4)
    rgba[:, 8:, 3] = 1.0
    rgba[:, 8:, :3] = 0.2
    rgba_red_hidden = rgba.clone()
    rgba_red_hidden[:, :8, 0] = 1.0
    rgb_a, alpha_a = composite_and_resize(rgba, 6)
    rgb_b, alpha_b = composite_and_resize(rgba_red_hidden, 6)
    torch.testing.assert_close(rgb_a, rgb_b)
    torch.testing.assert_close(alpha_a, alpha_b)
    assert rgb_a.shape == (3, 6, 6) and alpha_a.shape == (1, 6, 6)
    assert 0.0 < alpha_a[0, 0, 2] < 1.0  # the edge column is mixed: antialiased
    assert rgb_a.min() >= 0 and rgb_a.max() <= 1 and alpha_a.min() >= 0 and alpha_a.max() <= 1
    # Equal to compositing premultiplied colour after resizing.
    torch.testing.assert_close(rgb_a[:, :, 0], torch.ones(3, 6))
    torch.testing.assert_close(rgb_a[:, :, 5], torch.full((3, 6), 0.2))


def test_numeric_sort_and_num_frames(tmp_path):
    make_dataset(tmp_path, num_frames=11, anchors=False)
    data = load_frames(str(tmp_path), ref_size=SIZE, require_anchors=False)
    assert data.frame_ids == list(range(11))
    assert data.anchor_rgb is None and data.anchor_mask is None
    # The red channel encodes the frame number: frame 10 is last (not after 1).
    centre_red = data.ref_rgb[:, 0, SIZE // 2, SIZE // 2]
    torch.testing.assert_close(centre_red, torch.arange(11) * 10 / 255.0)

    first = load_frames(str(tmp_path), ref_size=SIZE, num_frames=4, require_anchors=False)
    assert first.frame_ids == [0, 1, 2, 3] and first.ref_rgb.shape[0] == 4
    torch.testing.assert_close(first.ref_rgb, data.ref_rgb[:4])


def test_device_is_honoured(tmp_path):
    make_dataset(tmp_path, num_frames=2)
    data = load_frames(str(tmp_path), ref_size=8, anchor_size=8, device="meta")
    for tensor in (data.ref_rgb, data.ref_mask, data.anchor_rgb, data.anchor_mask):
        assert tensor.device.type == "meta"
    if torch.cuda.is_available():
        assert load_frames(str(tmp_path), ref_size=8, anchor_size=8, device="cuda").ref_rgb.is_cuda


def test_hidden_files_are_ignored(tmp_path):
    make_dataset(tmp_path, num_frames=2)
    (tmp_path / "ref" / ".DS_Store").write_bytes(b"junk")
    assert load_frames(str(tmp_path), ref_size=8, anchor_size=8).num_frames == 2


# --------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------


def test_16bit_rgba_grey_alpha_and_palette_convert(tmp_path):
    make_dataset(tmp_path, num_frames=4, anchors=False)
    ref = tmp_path / "ref"
    rgba16 = np.zeros((SIZE, SIZE, 4), np.uint16)
    rgba16[..., 0], rgba16[..., 3] = 65535, 32768
    (ref / "0_rgba.png").write_bytes(png16(rgba16, 6))
    grey_alpha = np.zeros((SIZE, SIZE, 2), np.uint8)
    grey_alpha[..., 0], grey_alpha[..., 1] = 100, 255
    Image.fromarray(grey_alpha, mode="LA").save(ref / "1_rgba.png")
    palette = Image.fromarray(frame_rgba(2)).convert("RGB").quantize(8)
    palette.info["transparency"] = 0
    palette.save(ref / "2_rgba.png", transparency=0)

    data = load_frames(str(tmp_path), ref_size=SIZE, require_anchors=False)
    assert data.ref_mask[0].mean().item() == pytest.approx(128 / 255, abs=1e-6)
    torch.testing.assert_close(data.ref_rgb[0, :, 3, 3], torch.tensor([1.0, 1 - 128 / 255, 1 - 128 / 255]))
    torch.testing.assert_close(data.ref_rgb[1, :, 3, 3], torch.full((3,), 100 / 255))
    assert data.ref_mask[1].eq(1.0).all()
    palette_alpha = data.ref_mask[2, 0]
    assert palette_alpha.eq(0).any() and palette_alpha.eq(1).any()  # tRNS became alpha


def test_images_without_alpha_are_matted(tmp_path, monkeypatch):
    make_dataset(tmp_path, num_frames=3, anchors=False)
    ref = tmp_path / "ref"
    Image.fromarray(frame_rgba(0)[..., :3]).save(ref / "0_rgba.png")  # RGB
    Image.fromarray(np.full((SIZE, SIZE), 50000, np.uint16)).save(ref / "1_rgba.png")  # 16-bit grey
    Image.fromarray(frame_rgba(2)[..., 0]).save(ref / "2_rgba.png")  # L
    calls = []

    def fake_matte(rgb):
        assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3)
        calls.append(rgb.copy())
        return np.full(rgb.shape[:2], 0.25, np.float32)

    monkeypatch.setattr(matting, "matte_rembg", fake_matte)
    data = load_frames(str(tmp_path), ref_size=SIZE, require_anchors=False)
    assert len(calls) == 3
    assert (calls[1] == round(50000 / 65535 * 255)).all()  # 16-bit scaled, not clipped
    torch.testing.assert_close(data.ref_mask, torch.full((3, 1, SIZE, SIZE), 0.25))
    expected_grey = (50000 / 65535) * 0.25 + 0.75
    assert data.ref_rgb[1].mean().item() == pytest.approx(expected_grey, abs=2e-3)


def test_rgb_frames_offline_give_model_unavailable(tmp_path, monkeypatch):
    make_dataset(tmp_path, num_frames=2, anchors=False)
    Image.fromarray(frame_rgba(1)[..., :3]).save(tmp_path / "ref" / "1_rgba.png")
    matting._rembg_session.cache_clear()
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: None)  # no onnxruntime
    try:
        with pytest.raises(ModelUnavailable) as excinfo:
            load_frames(str(tmp_path), ref_size=8, require_anchors=False)
    finally:
        matting._rembg_session.cache_clear()
    message = str(excinfo.value)
    assert "\n" not in message and "1_rgba.png" in message
    assert "RGBA" in message and "prepare_video.py --matting color" in message


# --------------------------------------------------------------------------------------------
# bad input: one-line DataError naming the file
# --------------------------------------------------------------------------------------------


def test_missing_dataset_and_missing_ref(tmp_path):
    message = assert_data_error(tmp_path / "nope", "nope")
    assert "prepare_video.py" in message
    (tmp_path / "empty_dataset").mkdir()
    message = assert_data_error(tmp_path / "empty_dataset", os.path.join("empty_dataset", "ref"))
    assert "prepare_video.py" in message and "ref/" in message


def test_empty_ref(tmp_path):
    (tmp_path / "ref").mkdir()
    assert_data_error(tmp_path, "has no frames", require_anchors=False)


def test_gap_names_missing_frame(tmp_path):
    make_dataset(tmp_path, num_frames=5, anchors=False)
    os.remove(tmp_path / "ref" / "2_rgba.png")
    assert_data_error(tmp_path, "2_rgba.png is missing", require_anchors=False)
    os.remove(tmp_path / "ref" / "0_rgba.png")
    assert_data_error(tmp_path, "0_rgba.png is missing", require_anchors=False)


def test_duplicate_frame_number(tmp_path):
    make_dataset(tmp_path, num_frames=2, anchors=False)
    Image.fromarray(frame_rgba(1)).save(tmp_path / "ref" / "01_rgba.png")
    assert_data_error(tmp_path, "appears twice", require_anchors=False)


@pytest.mark.parametrize("name", ["frame_3.png", "3.png", "3_rgba.jpg", "3_RGBA.png"])
def test_bad_file_name(tmp_path, name):
    make_dataset(tmp_path, num_frames=3, anchors=False)
    (tmp_path / "ref" / name).write_bytes(b"x")
    assert_data_error(tmp_path, name, require_anchors=False)


def test_too_many_frames_asked(tmp_path):
    make_dataset(tmp_path, num_frames=3, anchors=False)
    message = assert_data_error(tmp_path, "num_frames=5", num_frames=5, require_anchors=False)
    assert "1..3" in message
    assert_data_error(tmp_path, "num_frames=0", num_frames=0, require_anchors=False)


def test_missing_anchor_folders(tmp_path):
    make_dataset(tmp_path, num_frames=3, anchors=False)
    message = assert_data_error(tmp_path, "zero123")
    assert "gen_mv.py" in message
    make_dataset(tmp_path / "b", num_frames=3)
    import shutil

    shutil.rmtree(tmp_path / "b" / "zero123" / "1_rgba")
    message = assert_data_error(tmp_path / "b", os.path.join("zero123", "1_rgba"))
    assert "gen_mv.py" in message
    # Asking for only the frames whose anchors exist works.
    assert load_frames(str(tmp_path / "b"), ref_size=8, anchor_size=8, num_frames=1).num_frames == 1


def test_wrong_anchor_count(tmp_path):
    make_dataset(tmp_path, num_frames=2, views=5)
    message = assert_data_error(tmp_path, os.path.join("zero123", "0_rgba"))
    assert "5 anchor views" in message and "gen_mv.py" in message
    make_dataset(tmp_path / "b", num_frames=2, views=7)
    assert_data_error(tmp_path / "b", "expected 6")
    make_dataset(tmp_path / "c", num_frames=2)
    (tmp_path / "c" / "zero123" / "1_rgba" / "notes.txt").write_text("x")
    assert_data_error(tmp_path / "c", "notes.txt")


def test_unreadable_and_truncated_png(tmp_path):
    make_dataset(tmp_path, num_frames=3, anchors=False)
    (tmp_path / "ref" / "1_rgba.png").write_bytes(b"this is not a png")
    message = assert_data_error(tmp_path, "1_rgba.png", require_anchors=False)
    assert "cannot be read" in message

    make_dataset(tmp_path / "b", num_frames=3, size=64, anchors=False)
    target = tmp_path / "b" / "ref" / "2_rgba.png"
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(noisy).save(target)
    content = target.read_bytes()
    target.write_bytes(content[: len(content) // 2])
    assert_data_error(tmp_path / "b", "2_rgba.png", require_anchors=False)

    make_dataset(tmp_path / "c", num_frames=2)
    anchor = tmp_path / "c" / "zero123" / "1_rgba" / "4.png"
    anchor.write_bytes(anchor.read_bytes()[:40])
    assert_data_error(tmp_path / "c", os.path.join("1_rgba", "4.png"))


def test_non_square(tmp_path):
    make_dataset(tmp_path, num_frames=2, anchors=False)
    Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(tmp_path / "ref" / "1_rgba.png")
    message = assert_data_error(tmp_path, "1_rgba.png", require_anchors=False)
    assert "30x20" in message and "prepare_video.py" in message


# --------------------------------------------------------------------------------------------
# the real sample
# --------------------------------------------------------------------------------------------


def test_minions_sample(minions_path):
    data = load_frames(minions_path, ref_size=64, anchor_size=32, num_frames=3)
    assert data.frame_ids == [0, 1, 2]
    assert data.ref_rgb.shape == (3, 3, 64, 64) and data.ref_mask.shape == (3, 1, 64, 64)
    assert data.anchor_rgb.shape == (3, 6, 3, 32, 32) and data.anchor_mask.shape == (3, 6, 1, 32, 32)
    for tensor in (data.ref_rgb, data.ref_mask, data.anchor_rgb, data.anchor_mask):
        assert tensor.dtype == torch.float32 and tensor.min() >= 0 and tensor.max() <= 1
    # An object in the middle, background at the corners.
    assert 0.05 < data.ref_mask.mean() < 0.6 and data.ref_mask[:, :, 32, 32].min() > 0.9
    assert data.ref_mask[:, :, 0, 0].max() == 0 and data.ref_rgb[:, :, 0, 0].min() == 1
    # Anchors: background alpha is 1/255 (soft, kept), and it composites to ~white.
    corners = data.anchor_mask[:, :, 0, 0, 0]
    torch.testing.assert_close(corners, torch.full_like(corners, 1 / 255), atol=1e-6, rtol=0)
    assert (data.anchor_rgb[:, :, :, 0, 0] > 0.99).all()
    assert (data.anchor_mask.flatten(2).amax(-1) > 0.99).all()  # every view shows the object


def test_frames_decoded_on_threads_equal_frames_decoded_one_by_one(tmp_path, monkeypatch):
    """load_frames decodes on LOAD_THREADS threads: the same tensors as one thread, in file order
    (frames and anchors differ from each other, so a mix-up would show), and a bad file is still
    the one-line error naming it."""
    from test_trainer import make_disc_dataset

    from stag4d.data import frames as frames_module

    path = make_disc_dataset(tmp_path / "disc", num_frames=5)
    for i in range(5):  # every anchor view its own image: a corner patch coded by the view
        for k in range(6):
            file = os.path.join(path, "zero123", f"{i}_rgba", f"{k}.png")
            image = np.array(Image.open(file))
            image[:4, :4] = (40 * k, 0, 0, 255)
            Image.fromarray(image).save(file)
    loaded = {}
    for threads in (1, frames_module.LOAD_THREADS):
        monkeypatch.setattr(frames_module, "LOAD_THREADS", threads)
        loaded[threads] = load_frames(path, ref_size=32, anchor_size=16)
    one, many = loaded.values()
    for key in ("ref_rgb", "ref_mask", "anchor_rgb", "anchor_mask"):
        assert torch.equal(getattr(one, key), getattr(many, key)), key
    assert not torch.equal(many.ref_rgb[0], many.ref_rgb[1])
    assert not torch.equal(many.anchor_rgb[0], many.anchor_rgb[4])
    assert not torch.equal(many.anchor_rgb[2, 1], many.anchor_rgb[2, 2])
    for i, k in ((0, 0), (2, 1), (4, 5)):  # each in its place: against the file read on its own
        rgb, alpha = frames_module.load_image(os.path.join(path, "zero123", f"{i}_rgba", f"{k}.png"), 16)
        assert torch.equal(many.anchor_rgb[i, k], rgb) and torch.equal(many.anchor_mask[i, k], alpha)
    rgb, _ = frames_module.load_image(os.path.join(path, "ref", "3_rgba.png"), 32)
    assert torch.equal(many.ref_rgb[3], rgb)

    bad = os.path.join(path, "zero123", "3_rgba", "2.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DataError, match="3_rgba/2.png cannot be read"):
        load_frames(path, ref_size=32, anchor_size=16)
