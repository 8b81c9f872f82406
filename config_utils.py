"""Configuration: OmegaConf YAML files + dotted command-line overrides, validated.

Every key the project reads is declared once in :class:`Config` (typed, with the faithful default
of the released STAG4D run, SPEC sections 3-8). A YAML file may start from another one with
``base: other.yaml`` (path relative to the file). Overrides use OmegaConf's dotted syntax::

    python main.py --config configs/stag4d.yaml path=dataset/minions save_path=minions \\
        holdout_views=[1,3] lambda_zero123=0

Errors are one line (:class:`errors.UserError`): an unknown key names the closest known key, a
value of the wrong type names the key and the expected type, a missing ``path`` says how to set it.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from errors import UserError

BACKENDS = ("auto", "torch", "gsplat")
TIME_MAPPINGS = ("full", "half", "released")


class ConfigError(UserError):
    """A bad configuration file or override."""


def _v11_anchor_table() -> List[List[float]]:
    # (azimuth, elevation offset) of the six Zero123++ v1.1 views, orbit_camera terms.
    return [[30.0, -30.0], [90.0, 20.0], [150.0, -30.0], [210.0, 20.0], [270.0, -30.0], [330.0, 20.0]]


@dataclass
class Config:
    """All settings, flat (as the released config). Defaults = the faithful STAG4D values."""

    # --- data and outputs ---
    path: str = MISSING  # dataset folder with ref/ (and zero123/ for anchors)
    save_path: str = ""  # run name; "" = the dataset folder's name
    outdir: str = "logs"  # checkpoints: <outdir>/<save_path>/<step>/
    valid_dir: str = "valid"  # validation renders: <valid_dir>/<save_path>/<step>_<name>/
    num_frames: Optional[int] = None  # T; None = every frame in ref/ (the released `size`)
    ref_size: int = 512  # reference frames are resized to this and rendered at it
    anchor_size: int = 256  # anchor views are loaded (and, in anchored mode, rendered) at this size
    export_frames: bool = True  # also write frames/<i>.ply (deformed Gaussians) at every save
    load_path: Optional[str] = None  # resume: run name under outdir, or a folder
    load_step: Optional[int] = None  # resume step; None = the latest saved

    # --- run ---
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    backend: str = "auto"  # rasterizer: auto | torch | gsplat
    gui: bool = False
    viewer_size: Optional[int] = None  # viewer image size; None = ref_size (at most 512)
    viewer_steps_per_frame: int = 1  # training steps per displayed viewer frame
    total_steps: int = 8000  # the released run stops at its save_step (8000)
    save_step: int = 8000  # save every save_step steps and at the end (0 = only at the end)
    valid_interval: int = 500  # front/back validation renders (0 = never)
    log_interval: int = 50  # losses are read back from the device every log_interval steps
    video_fps: int = 10  # validation videos
    iters: int = 2000  # step_ratio = min(1, step / iters)
    init_steps: int = 700  # coarse stage: no deformation, time of the middle frame
    batch_size: int = 4
    # step speed (same losses; tests/test_train_speed.py compares them on and off). Off by default:
    # no gain measured on the H100 (bench_train_step, within run-to-run noise)
    fuse_renders: bool = False  # reference + random renders in one rasterizer call when sizes match
    async_host_inputs: bool = False  # per-step host values reach the device by pinned non-blocking copies

    # --- cameras (SPEC section 2) ---
    radius: float = 2.0
    fovy: float = 49.1
    elevation: float = 0.0
    anchor_views: List[List[float]] = field(default_factory=_v11_anchor_table)

    # --- random views (SPEC section 4.2) ---
    invert_bg_prob: float = 0.5
    render_res_ratios: List[float] = field(default_factory=lambda: [0.3, 0.6])  # step_ratio limits
    render_res_sizes: List[int] = field(default_factory=lambda: [128, 256, 512])

    # --- model (SPEC section 3) ---
    num_pts: int = 10000
    init_radius: float = 0.5  # initial points uniform in a ball of this radius
    sh_degree: int = 0
    # full: grid coordinate 2t - 1 (t in [0, 1) spans the whole time axis); released/half: the
    # released quirk (t used as the coordinate: only half the axis). Our choice: full.
    time_mapping: str = "full"
    bounds: float = 1.6  # HexPlane box [-bounds, bounds]^3
    kplanes_features: int = 32
    kplanes_resolution: List[int] = field(default_factory=lambda: [64, 64, 64, 25])
    multires: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    net_width: int = 64
    deform_opacity: bool = False

    # --- losses (SPEC section 4) ---
    lambda_ref_rgb: float = 20000.0
    lambda_ref_alpha: float = 5000.0
    lambda_zero123: float = 1.0
    lambda_tv: float = 1.0  # HexPlane regularizers (fine stage only, as 4D Gaussian Splatting)
    time_smoothness_weight: float = 5.0
    plane_tv_weight: float = 0.05
    l1_time_planes: float = 0.05
    lambda_anisotropy: float = 1.0  # SPEC 4.5 gives no weight: 1
    scale_loss_ratio: float = 7.5
    anisotropy_activated: bool = True  # SPEC: activated scales; false = the released log-scales (always 0)
    # ours (off in the faithful config): photometric loss on the anchor views
    lambda_anchor_rgb: float = 0.0
    lambda_anchor_alpha: float = 0.0
    anchors_per_sample: int = 1  # random non-held-out anchors rendered per sample (0 = all)
    holdout_views: List[int] = field(default_factory=list)  # anchor indices never trained on
    holdout_frames: List[int] = field(default_factory=list)  # frame indices never trained on

    # --- Zero123 guidance (SPEC section 5) ---
    zero123_model: str = "ashawkey/zero123-xl-diffusers"
    guidance_scale: float = 5.0
    fp16: Optional[bool] = None  # None = fp16 on CUDA, fp32 on CPU
    guidance_compile: bool = False  # torch.compile the UNet and VAE encoder
    guidance_channels_last: bool = False
    guidance_compile_mode: str = "default"  # torch.compile mode when guidance_compile
    guidance_cuda_graph: bool = True  # replay the UNet forward from a CUDA graph (CUDA only; same results)
    guidance_cuda_graph_vae: bool = True  # VAE encoder forward + backward from CUDA graphs (CUDA only; same results)
    min_step_start: float = 0.5  # timestep window, fractions of 1000, linear up to anneal_steps
    min_step_end: float = 0.02
    max_step_start: float = 0.95
    max_step_end: float = 0.5
    anneal_steps: int = 3000

    # --- learning rates (SPEC section 7) ---
    spatial_lr_scale: float = 10.0
    position_lr_init: float = 2e-4
    position_lr_final: float = 2e-6
    position_lr_delay_mult: float = 0.01
    position_lr_max_steps: int = 2000
    deformation_lr_init: float = 1.6e-4
    deformation_lr_final: float = 1.6e-5
    deformation_lr_delay_mult: float = 0.02
    grid_lr_init: float = 1.6e-3
    grid_lr_final: float = 1.6e-4
    feature_lr: float = 5e-3
    opacity_lr: float = 0.02
    scaling_lr: float = 0.01
    rotation_lr: float = 0.002
    lr_delay_steps: int = 0  # ours; 0 = the released run (its delay multipliers then have no effect)
    adam_eps: float = 1e-15
    fused_adam: bool = True  # one fused CUDA kernel for the Adam update (CUDA only; same update)

    # --- densification (SPEC section 6) ---
    density_start_iter: int = 1200
    density_end_iter: int = 6000
    densification_interval: int = 100
    densify_grad_threshold_percent: float = 2.5
    percent_dense: float = 0.1
    extent: float = 1.0
    min_opacity: float = 0.01
    max_scale_prune: float = 0.1  # prune max scale > this * extent
    min_scale_prune: float = 0.001
    max_screen_size: float = 2.0
    screen_size_prune: bool = False  # the released screen-size test never fires (see densification.py)


KNOWN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))


def default_config() -> DictConfig:
    """The typed, struct-mode config with every default (``path`` still missing)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    return cfg


def closest_key(key: str, known: Sequence[str] = KNOWN_KEYS) -> Optional[str]:
    """The known key most similar to ``key`` (or None when nothing is close)."""
    # Compare the last dotted part too, so that e.g. "optim.lr" still finds a flat "lr".
    leaf = key.split(".")[-1].split("[")[0]
    for candidate in (key, leaf):
        match = difflib.get_close_matches(candidate, known, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def _check_keys(node: DictConfig, source: str) -> None:
    for key in node.keys():
        if key == "base":
            continue
        if key not in KNOWN_KEYS:
            hint = closest_key(str(key))
            suggestion = f"; did you mean '{hint}'?" if hint else "; see configs/stag4d.yaml for the keys"
            raise ConfigError(f"unknown setting '{key}' in {source}{suggestion}")


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> list[tuple[DictConfig, str]]:
    """The layers of a config file, base first: [(node, source name)]."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself; remove the cycle")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass --config configs/stag4d.yaml or another file")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml parse errors come in many classes
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path} is not valid YAML ({first}); fix the file") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value)")
    layers: list[tuple[DictConfig, str]] = []
    base = node.get("base")
    if base:
        layers = _read_yaml(os.path.join(os.path.dirname(path), str(base)), seen + (path,))
        node = OmegaConf.masked_copy(node, [k for k in node.keys() if k != "base"])
    return layers + [(node, path)]


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. save_path=run1 or holdout_views=[1,3])")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _merge(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    _check_keys(layer, source)
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"setting '{key}' in {source}" if key else source
        raise ConfigError(f"{where}: {_first_line(err)}") from err


def load_config(
    config_path: Optional[str] = None, overrides: Sequence[str] = (), require_path: bool = True
) -> DictConfig:
    """Defaults <- YAML file (and its ``base`` chain) <- ``key=value`` overrides, then validated.

    Raises:
        ConfigError: unknown key, wrong type, missing ``path``, or an invalid value.
    """
    cfg = default_config()
    if config_path is not None:
        for layer, source in _read_yaml(config_path):
            cfg = _merge(cfg, layer, source)
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "the command line")
    validate_config(cfg, require_path=require_path)
    return cfg


def config_from_dict(values: dict[str, Any], require_path: bool = True) -> DictConfig:
    """Defaults <- ``values`` (for tests and scripts), validated."""
    cfg = _merge(default_config(), OmegaConf.create(values), "the given settings")
    validate_config(cfg, require_path=require_path)
    return cfg


def validate_config(cfg: DictConfig, require_path: bool = True) -> None:
    """Check values that types cannot: ranges, choices, table shapes. Fills ``save_path``."""
    if OmegaConf.is_missing(cfg, "path") or not str(cfg.path).strip():
        if require_path:
            raise ConfigError("no dataset given: add path=dataset/NAME (a folder with ref/<i>_rgba.png)")
    elif not cfg.save_path:
        cfg.save_path = os.path.basename(os.path.normpath(str(cfg.path)))

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.backend in BACKENDS, f"backend={cfg.backend} is not one of {', '.join(BACKENDS)}")
    need(
        cfg.device == "auto" or cfg.device == "cpu" or str(cfg.device).startswith("cuda"),
        f"device={cfg.device} is not auto, cpu, cuda or cuda:N",
    )
    need(cfg.time_mapping in TIME_MAPPINGS, f"time_mapping={cfg.time_mapping} is not one of {', '.join(TIME_MAPPINGS)}")
    for key in ("batch_size", "ref_size", "anchor_size", "iters", "num_pts", "total_steps", "log_interval", "video_fps"):
        need(cfg[key] >= 1, f"{key}={cfg[key]} must be at least 1")
    need(cfg.viewer_size is None or cfg.viewer_size >= 1, f"viewer_size={cfg.viewer_size} must be at least 1 (or null)")
    need(cfg.viewer_steps_per_frame >= 1, f"viewer_steps_per_frame={cfg.viewer_steps_per_frame} must be at least 1")
    for key in ("init_steps", "save_step", "valid_interval", "anchors_per_sample"):
        need(cfg[key] >= 0, f"{key}={cfg[key]} must be 0 or more")
    need(cfg.num_frames is None or cfg.num_frames >= 1, f"num_frames={cfg.num_frames} must be at least 1 (or null)")
    need(0.0 <= cfg.invert_bg_prob <= 1.0, f"invert_bg_prob={cfg.invert_bg_prob} must be in [0, 1]")
    need(0 <= cfg.sh_degree <= 3, f"sh_degree={cfg.sh_degree} must be 0..3")
    need(
        len(cfg.render_res_sizes) == len(cfg.render_res_ratios) + 1,
        "render_res_sizes needs one more entry than render_res_ratios (e.g. [128,256,512] and [0.3,0.6])",
    )
    need(all(s >= 1 for s in cfg.render_res_sizes), f"render_res_sizes={list(cfg.render_res_sizes)} must be positive")
    need(len(cfg.anchor_views) >= 1 and all(len(row) == 2 for row in cfg.anchor_views),
         "anchor_views must be a list of [azimuth, elevation] pairs, e.g. [[30,-30],[90,20]]")
    num_views = len(cfg.anchor_views)
    bad_views = [v for v in cfg.holdout_views if not 0 <= v < num_views]
    need(not bad_views, f"holdout_views={list(cfg.holdout_views)}: anchor indices must be in 0..{num_views - 1}")
    need(all(f >= 0 for f in cfg.holdout_frames), f"holdout_frames={list(cfg.holdout_frames)} must be >= 0")
    for key in ("lambda_ref_rgb", "lambda_ref_alpha", "lambda_zero123", "lambda_tv", "lambda_anisotropy",
                "lambda_anchor_rgb", "lambda_anchor_alpha"):
        need(cfg[key] >= 0, f"{key}={cfg[key]} must be 0 or more")
    need(cfg.load_step is None or cfg.load_path is not None, "load_step is set but load_path is not: add load_path=NAME")


def split_script_overrides(
    overrides: Sequence[str], script_keys: Sequence[str], example: str = "save_path=run1"
) -> tuple[list[str], dict[str, Any]]:
    """Split ``key=value`` items into run-config overrides and a script's own options.

    Scripts such as visualize.py and evaluate.py take a run config plus keys of their own
    (``script_keys``); the first list goes to :func:`load_config`, the dict is the parsed rest.

    Raises:
        ConfigError: an item is not ``key=value`` or the script's items cannot be parsed (one line).
    """
    config_items, own_items = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"argument '{item}' is not key=value (e.g. {example})")
        (own_items if item.split("=", 1)[0].strip() in script_keys else config_items).append(item)
    try:
        own = OmegaConf.to_container(OmegaConf.from_dotlist(own_items)) if own_items else {}
    except Exception as err:  # omegaconf's grammar errors come in several classes
        raise ConfigError(f"cannot parse {own_items}: {_first_line(err)}") from None
    return config_items, own  # type: ignore[return-value]


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (what ``config.yaml`` of a saved run holds)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain dict (for checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


__all__ = [
    "Config",
    "ConfigError",
    "KNOWN_KEYS",
    "closest_key",
    "config_from_dict",
    "default_config",
    "load_config",
    "split_script_overrides",
    "to_container",
    "to_yaml",
    "validate_config",
]
