"""metrics.py: hand-computed values for PSNR / SSIM / IoU, and the weight-backed metrics end to end
with tiny randomly initialized networks loaded through the real loading code."""
import math
import os

import pytest
import torch
from torch import nn

from stag4d.errors import ModelUnavailable
from stag4d.evaluation import metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _image(seed: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g)


# --------------------------------------------------------------------------------- no weights


def test_composite_on_white():
    rgba = torch.tensor([0.2, 0.4, 0.6, 0.5]).view(4, 1, 1).expand(4, 2, 2)
    out = metrics.composite_on_white(rgba)
    assert out.shape == (3, 2, 2)
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.6, 0.7, 0.8]))
    assert metrics.composite_on_white(out) is out


def test_psnr_constant_offset():
    gt = torch.full((2, 3, 8, 8), 0.5)
    pred = gt + 0.1  # MSE = 0.01 -> 20 dB
    values = metrics.psnr(pred, gt)
    assert values.shape == (2,)
    assert torch.allclose(values, torch.tensor([20.0, 20.0]), atol=1e-4)
    assert metrics.psnr(pred[0], gt[0]).shape == ()
    assert torch.isinf(metrics.psnr(gt, gt)).all()


def test_ssim_identical_is_one_and_constants_match_formula():
    img = _image(0)
    assert torch.allclose(metrics.ssim(img, img), torch.ones(2), atol=1e-6)
    # Constant images a, b: means a, b, zero variances -> SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = metrics.ssim(torch.full((3, 16, 16), a), torch.full((3, 16, 16), b))
    assert value.shape == ()
    assert value.item() == pytest.approx(expected, rel=1e-5)


def _naive_ssim(x, y, size=11, sigma=1.5):
    """Reference SSIM written out per window position (numpy float64), channels averaged."""
    import numpy as np

    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for xc, yc in zip(x, y):
        for i in range(xc.shape[0] - size + 1):
            for j in range(xc.shape[1] - size + 1):
                px, py = xc[i : i + size, j : j + size], yc[i : i + size, j : j + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_reference_formula():
    pred, gt = _image(1, 16, batch=1), _image(2, 16, batch=1)
    gt = 0.6 * gt + 0.4 * pred  # correlated, so the value is far from 0
    expected = _naive_ssim(pred[0].double().numpy(), gt[0].double().numpy())
    assert 0.2 < expected < 0.9
    assert metrics.ssim(pred, gt).item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        metrics.ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


def test_mask_iou_known_masks():
    gt = torch.zeros(1, 1, 10, 10)
    pred = torch.zeros(1, 1, 10, 10)
    gt[..., 0:4, 0:5] = 1.0  # 20 pixels
    pred[..., 2:6, 0:5] = 0.8  # 20 pixels, 10 shared
    iou = metrics.mask_iou(pred, gt)
    assert iou.shape == (1,)
    assert iou.item() == pytest.approx(10 / 30)
    assert metrics.mask_iou(pred[0], gt[0]).item() == pytest.approx(10 / 30)
    # threshold: 0.8 is below 0.9, so the prediction is empty.
    assert metrics.mask_iou(pred, gt, threshold=0.9).item() == 0.0
    assert metrics.mask_iou(torch.zeros(4, 4), torch.zeros(4, 4)).item() == 1.0


def test_frechet_distance_gaussians():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 4, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance_of_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean shifted by 2 along one axis -> distance = 4.
    shifted = feats.clone()
    shifted[:, 0] += 2.0
    assert metrics.frechet_distance_of_features(shifted, feats) == pytest.approx(4.0, rel=1e-6)
    # Diagonal covariances: |s1 - s2|^2 summed over axes.
    mu = torch.zeros(2, dtype=torch.float64)
    d = metrics.frechet_distance(mu, torch.diag(torch.tensor([4.0, 1.0])), mu, torch.diag(torch.tensor([1.0, 9.0])))
    assert d == pytest.approx((2 - 1) ** 2 + (1 - 3) ** 2)


# --------------------------------------------------------------------------------- CLIP


def _tiny_clip_folder(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_clip_similarity_tiny_model(tmp_path):
    folder = _tiny_clip_folder(tmp_path / "clip")
    clip = metrics.CLIPSimilarity.load(folder, resize=64)
    img = _image(3, 48)
    same = clip(img, img)
    assert same.shape == (2,)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    other = clip(img, 1.0 - img)
    assert (other < 0.999).all()
    assert clip(img[0], img[0]).shape == ()


def test_clip_vision_only_folder(tmp_path):
    """A vision-only checkpoint (CLIPVisionModelWithProjection) loads through the same code."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=8)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    clip = metrics.CLIPSimilarity.load(str(tmp_path), resize=32)
    img = _image(9, 32)
    assert clip.embed(img).shape == (2, 8)
    assert torch.allclose(clip(img, img), torch.ones(2), atol=1e-5)


def test_clip_missing_model_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="no_such_clip"):
        metrics.CLIPSimilarity.load(str(tmp_path / "no_such_clip"))


# --------------------------------------------------------------------------------- LPIPS


def test_lpips_equals_torchmetrics_module(monkeypatch):
    """Our torchvision-free LPIPS-VGG == torchmetrics' _LPIPS on the same (random) VGG16 weights."""
    import torchmetrics.functional.image.lpips as tm_lpips

    lin_path = metrics.default_lpips_lin_path()
    if lin_path is None:
        pytest.skip("torchmetrics' lpips_models/vgg.pth is not installed")
    ours = metrics.LPIPSVGG(resize=None)
    for p in ours.features.parameters():  # random but not too small, so deep features are non-trivial
        nn.init.normal_(p, std=0.05)
    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: ours.features)
    theirs = tm_lpips._LPIPS(pretrained=True, net="vgg", model_path=lin_path).eval()
    ours.load_lins(torch.load(lin_path, map_location="cpu", weights_only=True))
    a, b = _image(4, 32) * 2 - 1, _image(5, 32) * 2 - 1
    expected = theirs(a, b).flatten()
    got = ours.distance(a, b)
    assert expected.abs().min() > 0
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)


def _tiny_lpips_files(tmp_path, widths=(4, 8, 8, 8, 8)):
    """A tiny network's weights in the real file layouts: torchvision VGG and lpips heads."""
    torch.manual_seed(0)
    net = metrics.LPIPSVGG(widths=widths, resize=None)
    backbone = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    backbone["classifier.0.weight"] = torch.zeros(2, 2)  # present in torchvision's file; ignored
    lins = {f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1) for k, w in enumerate(widths)}
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "lin.pth")
    return str(tmp_path / "vgg16.pth"), str(tmp_path / "lin.pth")


def test_lpips_tiny_end_to_end(tmp_path):
    backbone, lin = _tiny_lpips_files(tmp_path)
    lpips = metrics.LPIPSVGG.load(backbone, lin, resize=48, widths=(4, 8, 8, 8, 8))
    img = _image(6, 40)
    same = lpips(img, img)
    assert same.shape == (2,)
    assert torch.allclose(same, torch.zeros(2), atol=1e-7)
    small = lpips(img, (img + 0.05 * _image(7, 40)).clamp(0, 1))
    large = lpips(img, _image(8, 40))
    assert (small > 0).all() and (large > small).all()


def test_lpips_missing_weights(tmp_path):
    missing = str(tmp_path / "vgg16-397923af.pth")
    with pytest.raises(ModelUnavailable, match="vgg16-397923af.pth"):
        metrics.LPIPSVGG.load(missing)


# --------------------------------------------------------------------------------- FVD / FID-VID


class TinyI3D(nn.Module):
    """I3D-like: 3D convolutions then global pooling; the TorchScript I3D's call signature."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 6, 3, stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(6, 12, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return x.mean(dim=(2, 3, 4))


class TinyInception(nn.Module):
    """Inception-like 2D feature network with the TorchScript Inception's call signature ([0, 255] input)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5, stride=4)
        self.conv2 = nn.Conv2d(6, 10, 3, stride=2)

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x / 128.0 - 1.0))))
        return x.mean(dim=(2, 3))


def _videos(seed: int, count: int = 3, frames: int = 12, size: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(frames, 3, size, size, generator=g) for _ in range(count)]


def test_fvd_tiny_torchscript_end_to_end(tmp_path):
    path = str(tmp_path / "i3d_torchscript.pt")
    torch.manual_seed(0)
    torch.jit.script(TinyI3D()).save(path)
    fvd = metrics.FVD.load(path, size=32, clip_len=8, clip_stride=2)
    gt = _videos(0)
    assert fvd.features(gt).shape == (3 * 3, 12)
    same = fvd(gt, [v.clone() for v in gt])
    near = fvd([0.9 * v for v in gt], gt)
    far = fvd([0.5 * v for v in gt], gt)
    assert same == pytest.approx(0.0, abs=1e-8)
    assert far > near > same


def test_fvd_missing_or_bad_checkpoint(tmp_path):
    with pytest.raises(ModelUnavailable, match="i3d=PATH"):
        metrics.FVD.load(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="bad.pt"):
        metrics.FVD.load(str(bad))


def test_fid_vid_tiny_torchscript_end_to_end(tmp_path):
    path = str(tmp_path / "inception.pt")
    torch.manual_seed(0)
    torch.jit.script(TinyInception()).save(path)
    fid_vid = metrics.FIDVID.load(path)
    assert fid_vid.network.num_features == 10
    gt = _videos(2, count=4, frames=3, size=40)
    same = fid_vid(gt, [v.clone() for v in gt])
    near = fid_vid([0.9 * v for v in gt], gt)
    far = fid_vid([0.5 * v for v in gt], gt)
    assert abs(same) < 1e-6
    assert far > near > 1e-6


def test_fid_vid_injected_module():
    net = TinyInception()
    wrapped = metrics.TorchScriptInception(net, num_features=10, size=64)
    fid_vid = metrics.FIDVID(wrapped)
    gt = _videos(3, count=3, frames=2)
    assert abs(fid_vid(gt, gt)) < 1e-6
    with pytest.raises(ValueError, match=">= 2"):
        fid_vid(gt[:1], gt[:1])
    assert math.isfinite(fid_vid(_videos(4, count=3, frames=2), gt))
