import sys
import types

import numpy as np
import pytest

from stag4d.data import matting
from stag4d.errors import ModelUnavailable


def synthetic_tile(size: int = 96, background=(236, 233, 226), noise: float = 3.0, seed: int = 0):
    """Coloured, textured shapes on a plain off-white background with mild noise.

    Returns (rgb uint8 [H, W, 3], known foreground mask bool [H, W]). The disc has a white eye
    (close to the background colour) that only hole filling gets right.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.empty((size, size, 3), np.float32)
    image[:] = background
    mask = np.zeros((size, size), bool)

    disc = (xx - 0.35 * size) ** 2 + (yy - 0.45 * size) ** 2 < (0.22 * size) ** 2
    stripes = (np.sin(yy * 0.6) > 0)[..., None]
    image[disc] = np.where(stripes, [200, 40, 40], [40, 60, 190])[disc]
    eye = (xx - 0.35 * size) ** 2 + (yy - 0.40 * size) ** 2 < (0.06 * size) ** 2
    image[eye] = [250, 250, 250]
    mask |= disc

    box = (xx > 0.6 * size) & (xx < 0.88 * size) & (yy > 0.3 * size) & (yy < 0.8 * size)
    checker = (((xx // 6) + (yy // 6)) % 2 == 0)[..., None]
    image[box] = np.where(checker, [30, 150, 60], [120, 200, 90])[box]
    mask |= box

    image += rng.normal(0.0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_matte_color_recovers_known_mask():
    rgb, mask = synthetic_tile()
    alpha = matting.matte_color(rgb)
    assert alpha.shape == mask.shape and alpha.dtype == np.float32
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert iou(alpha > 0.5, mask) > 0.95
    # Noise in the background stays background.
    assert alpha[~mask].mean() < 0.02


def test_matte_color_on_grey_background_and_soft_edges():
    rgb, mask = synthetic_tile(size=80, background=(128, 128, 128), seed=1)
    alpha = matting.matte_color(rgb)
    assert iou(alpha > 0.5, mask) > 0.95
    # A blurred edge gives intermediate alpha values (the ramp is soft, not a hard threshold).
    blurred = rgb.astype(np.float32)
    blurred[1:-1, 1:-1] = (blurred[:-2, 1:-1] + blurred[2:, 1:-1] + blurred[1:-1, :-2] + blurred[1:-1, 2:]) / 4
    soft = matting.matte_color(blurred.round().astype(np.uint8), fill_holes=False)
    assert ((soft > 0.05) & (soft < 0.95)).sum() > 20


def test_matte_color_hole_filling_and_specks():
    rgb, mask = synthetic_tile(seed=2)
    eye = (rgb.astype(int) - 250).__abs__().max(-1) < 12
    with_holes = matting.matte_color(rgb, fill_holes=False)
    filled = matting.matte_color(rgb)
    assert with_holes[eye & mask].mean() < 0.5 < filled[eye & mask].mean()

    speckled = rgb.copy()
    speckled[5, 50] = [0, 0, 0]  # a single dark pixel far from the object
    assert matting.matte_color(speckled)[5, 50] == 0.0
    assert matting.matte_color(speckled, speck_size=0)[5, 50] > 0.5


def test_estimate_background_ignores_object_on_border():
    rgb = np.full((40, 40, 3), 200, np.uint8)
    rgb[:, :10] = [10, 20, 30]  # the object covers the whole left edge
    np.testing.assert_allclose(matting.estimate_background(rgb, border=2), [200 / 255] * 3, atol=1e-6)


def test_apply_alpha():
    rgb = np.full((4, 5, 3), 77, np.uint8)
    alpha = np.zeros((4, 5), np.float32)
    alpha[1:3, 1:4] = 1.0
    alpha[0, 0] = 0.001  # rounds to 0: background
    rgba = matting.apply_alpha(rgb, alpha)
    assert rgba.dtype == np.uint8 and rgba.shape == (4, 5, 4)
    assert (rgba[..., :3] == 77).all()
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == 255 and (rgba[..., 3] > 0).sum() == 6
    with pytest.raises(ValueError):
        matting.apply_alpha(rgb, alpha[:3])
    with pytest.raises(ValueError):
        matting.matte_color(rgb.astype(np.float32))


@pytest.fixture
def fresh_rembg_cache():
    matting._rembg_session.cache_clear()
    yield
    matting._rembg_session.cache_clear()


def _assert_one_line_unavailable(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    assert "RGBA" in message and "--matting color" in message


def test_matte_rembg_without_rembg_is_model_unavailable(monkeypatch, fresh_rembg_cache):
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "rembg", None)  # `import rembg` raises ImportError
    with pytest.raises(ModelUnavailable) as excinfo:
        matting.matte_rembg(np.zeros((8, 8, 3), np.uint8))
    _assert_one_line_unavailable(excinfo)


def test_matte_rembg_without_onnxruntime_is_model_unavailable(monkeypatch, fresh_rembg_cache):
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match="onnxruntime") as excinfo:
        matting.matte_rembg(np.zeros((8, 8, 3), np.uint8))
    _assert_one_line_unavailable(excinfo)


def test_matte_rembg_offline_download_is_model_unavailable(monkeypatch, fresh_rembg_cache):
    fake = types.ModuleType("rembg")

    def new_session(name):
        raise ConnectionError(f"HTTPSConnectionPool: Max retries exceeded for {name}.onnx\n(offline)")

    fake.new_session = new_session
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "rembg", fake)
    with pytest.raises(ModelUnavailable, match="u2net") as excinfo:
        matting.matte_rembg(np.zeros((8, 8, 3), np.uint8))
    _assert_one_line_unavailable(excinfo)


def test_matte_rembg_uses_the_session_mask(monkeypatch, fresh_rembg_cache, tmp_path):
    from PIL import Image

    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    (tmp_path / "u2net.onnx").write_bytes(b"model")  # cached: no network check

    fake = types.ModuleType("rembg")
    fake.new_session = lambda name: ("session", name)

    def remove(image, session, only_mask):
        assert session == ("session", "u2net") and only_mask
        mask = np.zeros(image.size[::-1], np.uint8)
        mask[2:4, 2:6] = 255
        return Image.fromarray(mask)

    fake.remove = remove
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "rembg", fake)
    alpha = matting.matte_rembg(np.zeros((8, 8, 3), np.uint8))
    assert alpha.dtype == np.float32 and alpha.shape == (8, 8)
    assert alpha.sum() == 8.0 and alpha[3, 5] == 1.0


def test_flood_fill_matches_geodesic_dilation():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for _ in range(10):
        free = torch.from_numpy((rng.random((30, 40)) < 0.55).astype(np.float32))[None, None]
        reached = free.clone()
        reached[..., 1:-1, 1:-1] = 0.0  # seeds: free border pixels
        for _ in range(30 * 40):  # one pixel per step: enough for any path
            reached = F.max_pool2d(reached, 3, stride=1, padding=1) * free
        assert torch.equal(matting._reach_from_border(free), reached)


def test_rembg_offline_without_its_model_fails_fast(monkeypatch, fresh_rembg_cache, tmp_path):
    """No cached model and its host unreachable: one line at once, not rembg's minute of retries."""
    import time

    fake = types.ModuleType("rembg")
    fake.new_session = lambda name: (_ for _ in ()).throw(AssertionError("must not try to download"))
    monkeypatch.setattr(matting.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "rembg", fake)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(matting, "REMBG_MODEL_HOST", ("192.0.2.1", 9))  # TEST-NET-1: never answers
    monkeypatch.setattr(matting, "REACH_TIMEOUT_S", 0.5)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as info:
        matting.matte_rembg(np.zeros((8, 8, 3), np.uint8))
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "\n" not in message and "u2net.onnx" in message and "--matting color" in message
