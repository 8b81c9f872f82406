"""Image and video metrics.

Without weights (pure torch): :func:`psnr`, :func:`ssim` (Gaussian window 11x11, sigma 1.5),
:func:`mask_iou`. Images are [B, 3, H, W] or [3, H, W] in [0, 1], compared on a WHITE background
(:func:`composite_on_white` for RGBA); batched inputs give one value per image [B], unbatched
inputs a scalar.

Weight-backed metrics of the Consistent4D video-to-4D benchmark (loaded lazily; a missing model
raises :class:`errors.ModelUnavailable` naming the id or path and the fix). How the benchmark's
released evaluation computes them, and what we do:

* CLIP similarity (:class:`CLIPSimilarity`): each image (on white) is resized to 512x512 (PIL
  bicubic), then put through the CLIP image processor of ``openai/clip-vit-base-patch32``
  (shortest side 224, centre crop, CLIP mean/std); the score is the cosine of the projected image
  embeddings (``CLIPModel.get_image_features``: the vision tower's pooled output through
  ``visual_projection``).
* LPIPS (:class:`LPIPSVGG`): torchmetrics ``LearnedPerceptualImagePatchSimilarity(net_type='vgg')``
  on 512x512 images scaled to [-1, 1]. torchmetrics builds its VGG16 through torchvision (which
  cannot be installed here) and downloads the backbone. We implement the same network without
  torchvision: the VGG16 ``features`` layers with torchvision's indices (so torchvision's
  ``vgg16-397923af.pth`` loads as it is, from a local path) and the five LPIPS linear heads, whose
  weights ship with torchmetrics (``lpips_models/vgg.pth``). A test checks equality with
  torchmetrics' own LPIPS module on the same weights.
* FVD (:class:`FVD`): an I3D network given as a local TorchScript file (``i3d_torchscript.pt``, the
  Kinetics-400 I3D used by StyleGAN-V / the common PyTorch FVD code, called as
  ``net(video, rescale=False, resize=False, return_features=True)`` on [B, 3, T, 224, 224] in
  [-1, 1] -> [B, 400]). Consistent4D feeds each whole 32-frame video once; a Frechet distance needs
  several samples per set, so we cut every video into clips (``clip_len`` frames, ``clip_stride``
  apart) and compare the clip features of all predicted videos with those of all ground-truth
  videos. Absolute values are therefore not comparable with the paper; use them to compare runs.
* FID-VID (:class:`FIDVID`): for every frame index t, the FID (torchmetrics
  ``FrechetInceptionDistance`` with our feature network) between the predicted frames at t of all
  videos (views) and the ground-truth frames at t; the mean over t. The feature network is a local
  TorchScript Inception (``inception-2015-12-05.pt`` as used by clean-fid: ``net(x, return_features=True)``
  on [B, 3, 299, 299] in [0, 255] -> [B, 2048]).

Every weight-backed class takes the network object itself in its constructor (tests inject tiny
randomly initialized networks of the same classes) and has a ``load``/``from_*`` classmethod for the
real weights.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from stag4d.errors import ModelUnavailable

# ---------------------------------------------------------------------------------------------
# Image helpers
# ---------------------------------------------------------------------------------------------


def composite_on_white(rgba: torch.Tensor) -> torch.Tensor:
    """RGBA [..., 4, H, W] in [0, 1] -> RGB [..., 3, H, W] on white: ``rgb * a + (1 - a)``.

    RGB input [..., 3, H, W] is returned unchanged.
    """
    if rgba.shape[-3] == 3:
        return rgba
    if rgba.shape[-3] != 4:
        raise ValueError(f"expected 3 or 4 channels, got shape {tuple(rgba.shape)}")
    rgb, alpha = rgba[..., :3, :, :], rgba[..., 3:4, :, :]
    return rgb * alpha + (1.0 - alpha)


def _batched(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both images as [B, C, H, W] float, and whether the input was a single image."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    single = pred.dim() == 3
    if single:
        pred, gt = pred[None], gt[None]
    if pred.dim() != 4:
        raise ValueError(f"expected [B, C, H, W] or [C, H, W], got {tuple(pred.shape)}")
    return pred.float(), gt.float(), single


def _unbatch(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size], bicubic with antialiasing (close to PIL's bicubic)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------
# Metrics without weights
# ---------------------------------------------------------------------------------------------


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: [B] for [B, C, H, W], a scalar for [C, H, W].

    ``10 log10(data_range^2 / MSE)``; identical images give +inf.
    """
    pred, gt, single = _batched(pred, gt)
    mse = (pred - gt).pow(2).flatten(1).mean(dim=1)
    return _unbatch(10.0 * torch.log10(data_range**2 / mse), single)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    """Normalized 1D Gaussian [size]."""
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of [B, C, H, W] per channel, 'valid' (no padding) -> [B, C, H-k+1, W-k+1]."""
    channels, k = x.shape[1], window.numel()
    wy = window.view(1, 1, k, 1).expand(channels, 1, k, 1)
    wx = window.view(1, 1, 1, k).expand(channels, 1, 1, k)
    return F.conv2d(F.conv2d(x, wy, groups=channels), wx, groups=channels)


def ssim(
    pred: torch.Tensor,
    gt: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), per image: [B] or a scalar.

    Gaussian window (11x11, sigma 1.5) applied per channel without padding (the border where the
    window does not fit is left out, as in the reference implementation); the SSIM map is averaged
    over channels and pixels.
    """
    pred, gt, single = _batched(pred, gt)
    if min(pred.shape[-2:]) < window_size:
        raise ValueError(f"images {tuple(pred.shape[-2:])} are smaller than the SSIM window {window_size}")
    x, y = pred.double(), gt.double()
    window = _gaussian_window(window_size, sigma, x.device, x.dtype)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _blur_valid(x, window), _blur_valid(y, window)
    var_x = _blur_valid(x * x, window) - mu_x**2
    var_y = _blur_valid(y * y, window) - mu_y**2
    cov_xy = _blur_valid(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _unbatch(ssim_map.flatten(1).mean(dim=1).to(pred.dtype), single)


def mask_iou(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union of the masks ``alpha > threshold``, per image.

    Shapes [B, 1, H, W] -> [B]; [1, H, W] or [H, W] -> a scalar. Two empty masks give IoU 1.
    """
    if pred_alpha.shape != gt_alpha.shape:
        raise ValueError(f"alpha shapes differ: {tuple(pred_alpha.shape)} vs {tuple(gt_alpha.shape)}")
    single = pred_alpha.dim() <= 3
    if pred_alpha.dim() == 2:
        pred_alpha, gt_alpha = pred_alpha[None], gt_alpha[None]
    if single:
        pred_alpha, gt_alpha = pred_alpha[None], gt_alpha[None]
    pred_mask = (pred_alpha > threshold).flatten(1)
    gt_mask = (gt_alpha > threshold).flatten(1)
    inter = (pred_mask & gt_mask).sum(dim=1).float()
    union = (pred_mask | gt_mask).sum(dim=1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
    return _unbatch(iou, single)


# ---------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues clamped)."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    ``tr((C1 C2)^(1/2)) = tr((C1^(1/2) C2 C1^(1/2))^(1/2))``: both square roots are of symmetric PSD
    matrices (eigh), which is stable for the rank-deficient covariances of few samples.
    """
    mu1, mu2, cov1, cov2 = mu1.double(), mu2.double(), cov1.double(), cov2.double()
    root1 = _sqrt_psd(cov1)
    eigvals = torch.linalg.eigvalsh(root1 @ cov2 @ root1)
    tr_covmean = eigvals.clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2.0 * tr_covmean
    return max(float(value), 0.0)


def frechet_distance_of_features(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Frechet distance between the Gaussians fitted to features [N, D] and [M, D]."""
    return frechet_distance(*feature_statistics(pred), *feature_statistics(gt))


# ---------------------------------------------------------------------------------------------
# CLIP image similarity
# ---------------------------------------------------------------------------------------------

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


def _hf_load(loader, model_id: str, what: str):
    """``loader.from_pretrained(model_id)`` with a one-line ModelUnavailable on failure."""
    try:
        return loader.from_pretrained(model_id)
    except Exception as err:  # hub offline, missing folder, wrong layout: all mean "not available"
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}" if str(err).strip() else type(err).__name__
        if os.path.isdir(model_id):
            fix = "the folder must hold a save_pretrained CLIP model and its image processor"
        else:
            fix = (f"download it where the hub is reachable (huggingface-cli download {model_id}) "
                   "or give a local folder (evaluate: clip_model=DIR)")
        raise ModelUnavailable(f"cannot load {what} from {model_id} ({reason}): {fix}") from None


class CLIPSimilarity:
    """Cosine similarity of CLIP image embeddings, as Consistent4D's evaluation computes it.

    ``model``: a ``transformers.CLIPModel`` or ``CLIPVisionModelWithProjection`` (both have
    ``vision_model`` and ``visual_projection``; the embedding is the projected pooled output, i.e.
    ``CLIPModel.get_image_features``). ``processor``: a ``CLIPImageProcessor``. Images are resized
    to ``resize`` (512) first, as the benchmark does.
    """

    def __init__(self, model, processor, resize: int = 512, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.resize = resize
        self.device = torch.device(device)

    @classmethod
    def load(cls, model_id: str = DEFAULT_CLIP_MODEL, device: torch.device | str = "cpu", resize: int = 512):
        """From a hub id or a local ``save_pretrained`` folder (full CLIPModel or vision-only)."""
        from transformers import (
            AutoConfig,
            CLIPImageProcessor,
            CLIPModel,
            CLIPVisionModelWithProjection,
        )

        config = _hf_load(AutoConfig, model_id, "the CLIP config")
        # A full CLIP checkpoint loads as CLIPModel: its projection size lives in the top-level
        # config, which a vision-only class would not read.
        loader = CLIPModel if config.model_type == "clip" else CLIPVisionModelWithProjection
        model = _hf_load(loader, model_id, "the CLIP model")
        processor = _hf_load(CLIPImageProcessor, model_id, "the CLIP image processor")
        return cls(model, processor, resize=resize, device=device)

    def _pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> processor output [B, 3, h, w] (uint8 -> PIL bicubic resize first)."""

        arrays = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pils = [Image.fromarray(a).resize((self.resize, self.resize), Image.BICUBIC) for a in arrays]
        return self.processor(images=pils, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, D] of images [B, 3, H, W] in [0, 1] (on white)."""
        pixels = self._pixel_values(images).to(self.device, dtype=next(self.model.parameters()).dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled).float()

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Cosine similarity per image: [B] or a scalar."""
        pred, gt, single = _batched(pred, gt)
        sim = F.cosine_similarity(self.embed(pred), self.embed(gt), dim=-1).cpu()
        return _unbatch(sim, single)


# ---------------------------------------------------------------------------------------------
# LPIPS (VGG16), torchvision-free
# ---------------------------------------------------------------------------------------------

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)


def default_vgg16_path() -> str:
    """Where torchvision caches the VGG16 ImageNet weights: ``<torch hub dir>/checkpoints/``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)


def default_lpips_lin_path() -> str | None:
    """The LPIPS VGG linear-head weights that ship with torchmetrics (found without importing it)."""

    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "functional", "image", "lpips_models", "vgg.pth")
    return path if os.path.isfile(path) else None


class LPIPSVGG(nn.Module):
    """LPIPS with the VGG16 backbone (Zhang et al. 2018), equal to torchmetrics' ``net_type='vgg'``.

    ``features`` has torchvision's ``vgg16().features`` layer indices, so its state dict keys are
    those of ``vgg16-397923af.pth`` (``features.N.weight``); ``widths`` other than VGG16's give a
    tiny network of the same structure for tests. Inputs are in [0, 1] and resized to ``resize``.
    """

    # Stage ends (exclusive) in ``features``: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    _SLICE_ENDS = (4, 9, 16, 23, 30)
    # LPIPS input scaling (from [-1, 1] to the statistics VGG was trained on).
    _SHIFT = (-0.030, -0.088, -0.188)
    _SCALE = (0.458, 0.448, 0.450)

    def __init__(self, widths: Sequence[int] = VGG16_WIDTHS, resize: int | None = 512):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for stage, (width, convs) in enumerate(zip(widths, VGG16_CONVS_PER_STAGE)):
            if stage > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(convs):
                layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = width
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, kernel_size=1, bias=False) for w in widths)
        self.register_buffer("shift", torch.tensor(self._SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self._SCALE).view(1, 3, 1, 1), persistent=False)
        self.resize = resize
        self.eval().requires_grad_(False)

    # -- weights ------------------------------------------------------------------------------

    def load_backbone(self, state: dict) -> None:
        """VGG16 weights: torchvision layout (``features.N.*``, classifier ignored) or bare ``N.*``."""
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not feats:
            feats = {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
        self.features.load_state_dict(feats, strict=True)

    def load_lins(self, state: dict) -> None:
        """LPIPS heads: the lpips / torchmetrics layout ``lin{k}.model.{0|1}.weight`` or ``lins.{k}.weight``."""
        mapped = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
                mapped[f"{parts[0][3:]}.weight"] = value
            elif parts[0] == "lins":
                mapped[".".join(parts[1:])] = value
        self.lins.load_state_dict(mapped, strict=True)

    @classmethod
    def load(
        cls,
        backbone_path: str | None = None,
        lin_path: str | None = None,
        device: torch.device | str = "cpu",
        resize: int | None = 512,
        widths: Sequence[int] = VGG16_WIDTHS,
    ) -> "LPIPSVGG":
        """Real LPIPS-VGG from local files (nothing is downloaded).

        ``backbone_path``: torchvision's ``vgg16-397923af.pth`` (default: torch hub's cache,
        :func:`default_vgg16_path`). ``lin_path``: LPIPS ``vgg.pth`` (default: torchmetrics' copy).
        ``widths``: the stage widths of the files (VGG16's; tests load tiny networks).
        """
        backbone_path = backbone_path or default_vgg16_path()
        lin_path = lin_path or default_lpips_lin_path()
        if not os.path.isfile(backbone_path):
            raise ModelUnavailable(
                f"LPIPS VGG16 backbone weights not found at {backbone_path}: download {VGG16_URL} there "
                "or pass the file's path (evaluate: lpips_vgg=PATH)"
            )
        if lin_path is None or not os.path.isfile(lin_path):
            raise ModelUnavailable(
                f"LPIPS linear-head weights not found at {lin_path}: install torchmetrics (it ships "
                "lpips_models/vgg.pth) or pass the lpips package's weights/v0.1/vgg.pth (evaluate: lpips_lin=PATH)"
            )
        model = cls(widths=widths, resize=resize)
        try:
            model.load_backbone(torch.load(backbone_path, map_location="cpu", weights_only=True))
            model.load_lins(torch.load(lin_path, map_location="cpu", weights_only=True))
        except Exception as err:
            raise ModelUnavailable(
                f"cannot load LPIPS weights from {backbone_path} / {lin_path} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}); expected torchvision's VGG16 and LPIPS' vgg.pth"
            ) from None
        return model.to(device)

    # -- forward ------------------------------------------------------------------------------

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five VGG stage outputs of scaled images [B, 3, H, W]."""
        outs, start = [], 0
        for end in self._SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs

    @staticmethod
    def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def distance(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """LPIPS [B] of images [B, 3, H, W] in [-1, 1] (no resizing)."""
        feats0 = self.stage_features((in0 - self.shift) / self.scale)
        feats1 = self.stage_features((in1 - self.shift) / self.scale)
        total = 0.0
        for lin, f0, f1 in zip(self.lins, feats0, feats1):
            diff = (self._unit_normalize(f0) - self._unit_normalize(f1)) ** 2
            total = total + lin(diff).mean(dim=(2, 3))
        return total[:, 0]

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """LPIPS per image ([B] or a scalar) of images in [0, 1], resized to ``self.resize`` first."""
        pred, gt, single = _batched(pred, gt)
        device = self.shift.device
        pred, gt = pred.to(device), gt.to(device)
        if self.resize is not None:
            pred, gt = resize_square(pred, self.resize).clamp(0, 1), resize_square(gt, self.resize).clamp(0, 1)
        return _unbatch(self.distance(pred * 2 - 1, gt * 2 - 1).cpu(), single)


# ---------------------------------------------------------------------------------------------
# Video metrics: FVD (I3D) and FID-VID (Inception)
# ---------------------------------------------------------------------------------------------


def _load_torchscript(path: str, what: str, fix: str) -> torch.jit.ScriptModule:
    if not path or not os.path.isfile(path):
        raise ModelUnavailable(f"{what} not found at {path}: {fix}")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as err:
        raise ModelUnavailable(
            f"{path} is not a loadable TorchScript {what} ({type(err).__name__}: {str(err).splitlines()[0][:120]}); {fix}"
        ) from None


class TorchScriptI3D(nn.Module):
    """The TorchScript I3D of common FVD code: [B, 3, T, H, W] in [-1, 1] -> features [B, D]."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.module(videos, rescale=False, resize=False, return_features=True)


class TorchScriptInception(nn.Module):
    """A TorchScript Inception (clean-fid's ``inception-2015-12-05.pt``): [B, 3, H, W] in [0, 1] -> [B, D].

    The network takes [0, 255] values and ``return_features=True``; ``num_features`` lets
    torchmetrics size its statistics without a dummy forward pass.
    """

    def __init__(self, module: nn.Module, num_features: int = 2048, size: int = 299):
        super().__init__()
        self.module = module
        self.num_features = num_features
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_square(images.float(), self.size).clamp(0, 1) * 255.0
        return self.module(x, return_features=True).reshape(images.shape[0], -1)


def _video_clips(video: torch.Tensor, clip_len: int | None, stride: int) -> list[torch.Tensor]:
    """Clips [clip_len, 3, H, W] of a video [T, 3, H, W]; the whole video when it is shorter."""
    frames = video.shape[0]
    if clip_len is None or frames <= clip_len:
        return [video]
    return [video[s : s + clip_len] for s in range(0, frames - clip_len + 1, stride)]


class FVD:
    """Frechet video distance between sets of videos with an I3D feature network.

    ``network``: an ``nn.Module`` mapping [B, 3, T, S, S] in [-1, 1] to [B, D] (the real one:
    :meth:`load`). Videos are [T, 3, H, W] in [0, 1] on white; they are resized to ``size`` and cut
    into clips of ``clip_len`` frames every ``clip_stride`` frames (module docstring: why).
    """

    def __init__(self, network: nn.Module, size: int = 224, clip_len: int | None = 16, clip_stride: int = 4,
                 device: torch.device | str = "cpu"):
        self.network = network.to(device).eval()
        self.size, self.clip_len, self.clip_stride = size, clip_len, clip_stride
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str, device: torch.device | str = "cpu", **kwargs) -> "FVD":
        module = _load_torchscript(
            path, "I3D network",
            "save the Kinetics-400 I3D TorchScript (i3d_torchscript.pt of StyleGAN-V's FVD) there or pass its path (evaluate: i3d=PATH)",
        )
        return cls(TorchScriptI3D(module), device=device, **kwargs)

    @torch.no_grad()
    def features(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        """Clip features [N, D] of videos, each [T, 3, H, W] in [0, 1]."""
        feats = []
        for video in videos:
            for clip in _video_clips(video, self.clip_len, self.clip_stride):
                x = resize_square(clip.float().to(self.device), self.size).clamp(0, 1) * 2 - 1
                feats.append(self.network(x.permute(1, 0, 2, 3)[None]).reshape(1, -1).double().cpu())
        return torch.cat(feats)

    def __call__(self, pred_videos: Sequence[torch.Tensor], gt_videos: Sequence[torch.Tensor]) -> float:
        pred, gt = self.features(pred_videos), self.features(gt_videos)
        if pred.shape[0] < 2 or gt.shape[0] < 2:
            raise ValueError("FVD needs at least 2 clips per set: give more views or a smaller clip_len")
        return frechet_distance_of_features(pred, gt)


class FIDVID:
    """Mean over frame indices of the FID between the predicted and ground-truth frames at that index.

    ``network``: an ``nn.Module`` mapping images [B, 3, H, W] in [0, 1] to features [B, D] (the real
    one: :meth:`load`). Each FID is torchmetrics' ``FrechetInceptionDistance`` with this network.
    Needs at least 2 videos (views) per set.
    """

    def __init__(self, network: nn.Module, device: torch.device | str = "cpu"):
        self.network = network.to(device).eval()
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str, device: torch.device | str = "cpu") -> "FIDVID":
        module = _load_torchscript(
            path, "Inception network",
            "save clean-fid's inception-2015-12-05.pt TorchScript there or pass its path (evaluate: inception=PATH)",
        )
        with torch.no_grad():  # feature size, so that torchmetrics can size its statistics
            num_features = int(module(torch.zeros(1, 3, 299, 299), return_features=True).reshape(1, -1).shape[1])
        return cls(TorchScriptInception(module, num_features=num_features), device=device)

    @torch.no_grad()
    def __call__(self, pred_videos: Sequence[torch.Tensor], gt_videos: Sequence[torch.Tensor]) -> float:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if len(pred_videos) != len(gt_videos) or len(pred_videos) < 2:
            raise ValueError(f"FID-VID needs the same number (>= 2) of predicted and ground-truth videos, "
                             f"got {len(pred_videos)} and {len(gt_videos)}")
        frames = min(min(v.shape[0] for v in pred_videos), min(v.shape[0] for v in gt_videos))
        fid = FrechetInceptionDistance(feature=self.network, reset_real_features=True).to(self.device)
        values = []
        for t in range(frames):
            fid.reset()
            fid.update(torch.stack([v[t] for v in gt_videos]).float().to(self.device), real=True)
            fid.update(torch.stack([v[t] for v in pred_videos]).float().to(self.device), real=False)
            values.append(max(float(fid.compute()), 0.0))
        return float(np.mean(values))
