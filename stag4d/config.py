"""The run config: one typed dataclass composed of each component's own settings.

Each part owns its settings with their defaults (the faithful STAG4D values, SPEC sections 2-8),
help text and ranges (:mod:`stag4d.settings`); :class:`RunConfig` composes them, one section each,
and a component receives only its section::

    data        stag4d.data.frames.DataConfig             path, num_frames, ref_size, holdout_*
    camera      cam_utils.CameraConfig                    radius, fovy, elevation, anchor_views
    model       gs_renderer.ModelConfig                   num_pts, init_radius, sh_degree
    deformation stag4d.gaussians.deformation.DeformationConfig   HexPlane and MLP
    loss        stag4d.training.losses.LossConfig         loss weights
    guidance    guidance.GuidanceConfig                   Zero123 SDS
    optim       stag4d.training.optim.OptimConfig         learning rates, Adam
    densify     stag4d.training.densification.DensifyStrategy   clone / split / prune
    train       stag4d.training.trainer.TrainConfig       schedule, sampling, device, resume
    output      stag4d.training.trainer.OutputConfig      folders, save / log / validation intervals
    viewer      stag4d.viewer.config.ViewerConfig         gui=web|dearpygui, host, port

Files and overrides: defaults <- a YAML file (which may start from another with ``base:
other.yaml``, relative to the file) <- ``key=value`` overrides (OmegaConf dotted syntax). Every
setting name is unique across sections, so a key may be written short (``num_pts=3000``, or flat
at the top of a YAML file, as the released configs are) or in full (``model.num_pts=3000``, or
under its section). ``python main.py --help-config`` lists every key with its default and meaning.

Errors are one line (:class:`~stag4d.settings.ConfigError`): an unknown key names the closest
known one, a removed key says why, a wrong type names the key and the expected type, a value out
of range names the key and the range, a missing ``path`` says how to set it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cam_utils import CameraConfig
from gs_renderer import ModelConfig
from guidance import GuidanceConfig
from stag4d.data.frames import DataConfig
from stag4d.errors import DataError
from stag4d.gaussians.deformation import DeformationConfig
from stag4d.settings import ConfigError, check_settings, fields_help, to_yaml
from stag4d.training.densification import DensifyStrategy
from stag4d.training.losses import LossConfig
from stag4d.training.optim import OptimConfig
from stag4d.training.trainer import OutputConfig, TrainConfig
from stag4d.viewer.config import ViewerConfig


@dataclass
class RunConfig:
    """Every setting of a run, one section per component (see the module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    deformation: DeformationConfig = field(default_factory=DeformationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyStrategy = field(default_factory=DensifyStrategy)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)

    def check(self) -> None:
        """Rules across sections."""
        views = len(self.camera.anchor_views)
        bad = [v for v in self.data.holdout_views if v >= views]
        if bad:
            raise ConfigError(f"holdout_views={self.data.holdout_views}: anchor indices must be in 0..{views - 1}")


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]
# setting name -> its section: names are unique across sections, so short keys are unambiguous
KEY_SECTIONS: dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _field in dataclasses.fields(_cls):
        if _field.name in KEY_SECTIONS or _field.name in SECTIONS:
            raise RuntimeError(f"setting name {_field.name!r} of section {_section!r} is not unique")
        KEY_SECTIONS[_field.name] = _section
KNOWN_KEYS: tuple[str, ...] = tuple(KEY_SECTIONS)

YAML_SUFFIXES = (".yaml", ".yml")
# Settings that name folders under the output roots: written literally, never interpolated.
NAME_SETTINGS = (("output", "save_path"), ("train", "load_path"))
# Keys that existed once: reading one says what happened to it.
REMOVED_KEYS = {
    "fuse_renders": "was removed (one rasterizer call for the reference and random views: no gain measured, "
                    "see the README's measurements); drop it",
    "async_host_inputs": "was removed (pinned non-blocking copies of the per-step host values: no gain "
                         "measured); drop it",
}


def closest_key(key: str, known: Sequence[str] = KNOWN_KEYS) -> Optional[str]:
    """The known key most similar to ``key`` (or None when nothing is close)."""
    leaf = key.split(".")[-1].split("[")[0]
    for candidate in (key, leaf):
        match = difflib.get_close_matches(candidate, known, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


def _unknown(key: str, source: str, known: Sequence[str] = KNOWN_KEYS) -> ConfigError:
    if key in REMOVED_KEYS:
        return ConfigError(f"setting '{key}' in {source} {REMOVED_KEYS[key]}")
    hint = closest_key(key, known)
    suggestion = f"; did you mean '{hint}'?" if hint else "; python main.py --help-config lists the keys"
    return ConfigError(f"unknown setting '{key}' in {source}{suggestion}")


def _nest(layer: DictConfig, source: str, drop_removed: bool = False) -> DictConfig:
    """A layer (YAML file or overrides) with every key under its section: short keys are moved,
    section blocks are checked key by key."""
    nested: dict[str, dict[str, Any]] = {}
    for key in layer.keys():
        key = str(key)
        if key == "base":
            continue
        value = layer._get_node(key)  # the node, unresolved (interpolations stay as written)
        if key in SECTIONS:
            if not isinstance(value, DictConfig):
                raise ConfigError(f"'{key}' in {source} must be a block of settings of that section")
            names = {f.name for f in dataclasses.fields(SECTIONS[key])}
            for sub in value.keys():
                if str(sub) not in names:
                    if drop_removed and str(sub) in REMOVED_KEYS:
                        continue
                    raise _unknown(f"{key}.{sub}", source, [f"{key}.{n}" for n in names])
                nested.setdefault(key, {})[str(sub)] = value._get_node(str(sub))
        elif key in KEY_SECTIONS:
            nested.setdefault(KEY_SECTIONS[key], {})[key] = value
        elif not (drop_removed and key in REMOVED_KEYS):
            raise _unknown(key, source)
    return OmegaConf.create(nested)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _merge(cfg: DictConfig, layer: DictConfig, source: str, drop_removed: bool = False) -> DictConfig:
    layer = _nest(layer, source, drop_removed)
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"setting '{str(key).split('.')[-1]}' in {source}" if key else source
        raise ConfigError(f"{where}: {_first_line(err)}") from err


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> list[tuple[DictConfig, str]]:
    """The layers of a config file, base first: [(node, source name)]."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself; remove the cycle")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass --config configs/stag4d.yaml or another file")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml parse errors come in many classes; their text quotes the file
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the file") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value)")
    layers: list[tuple[DictConfig, str]] = []
    base = node.get("base")
    if base:
        if not str(base).lower().endswith(YAML_SUFFIXES):
            raise ConfigError(f"{path}: base: {base} is not a YAML config (.yaml or .yml); name another config file")
        layers = _read_yaml(os.path.join(os.path.dirname(path), str(base)), seen + (path,))
    return layers + [(node, path)]


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. save_path=run1 or holdout_views=[1,3])")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as err:  # OmegaConf's grammar errors and yaml's parser errors
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {_first_line(err)}") from None


def _finish(node: DictConfig, require_path: bool) -> RunConfig:
    """The typed, checked RunConfig of a merged node; fills ``save_path``."""
    for section, key in NAME_SETTINGS:  # names of folders: no ${...} (environment variables or others)
        if OmegaConf.is_interpolation(node[section], key):
            raise ConfigError(f"{key} may not use ${{...}} interpolation: write the name itself")
    if OmegaConf.is_missing(node.data, "path") or not str(node.data.path).strip():
        if require_path:
            raise ConfigError("no dataset given: add path=dataset/NAME (a folder with ref/<i>_rgba.png)")
        node.data.path = ""
    elif not node.output.save_path:
        node.output.save_path = os.path.basename(os.path.normpath(str(node.data.path)))
    try:
        cfg: RunConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"setting '{str(key).split('.')[-1]}': {_first_line(err)}" if key else _first_line(err)) from err
    check_settings(cfg)
    return cfg


def load_config(config_path: Optional[str] = None, overrides: Sequence[str] = (), require_path: bool = True,
                drop_removed: bool = False) -> RunConfig:
    """Defaults <- YAML file (and its ``base`` chain) <- ``key=value`` overrides, typed and checked.

    Args:
        drop_removed: ignore keys listed in REMOVED_KEYS (for the saved configs of older runs).

    Raises:
        ConfigError: unknown or removed key, wrong type, value out of range, missing ``path``.
    """
    node = OmegaConf.structured(RunConfig)
    if config_path is not None:
        for layer, source in _read_yaml(config_path):
            node = _merge(node, layer, source, drop_removed)
    if overrides:
        node = _merge(node, _parse_overrides(overrides), "the command line")
    return _finish(node, require_path)


def config_from_dict(values: dict[str, Any], require_path: bool = True) -> RunConfig:
    """Defaults <- ``values`` (short or sectioned keys; for tests and scripts), typed and checked."""
    return _finish(_merge(OmegaConf.structured(RunConfig), OmegaConf.create(values), "the given settings"), require_path)


def saved_run_config(folder: str) -> Optional[RunConfig]:
    """The config.yaml of a saved step (either layout: sectioned, or flat as older runs wrote it),
    checked as any config is; None when the step has none.

    Raises:
        DataError: the file is there but not a valid run config (one line naming it).
    """
    path = os.path.join(folder, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        return load_config(path, require_path=False, drop_removed=True)
    except ConfigError as err:
        raise DataError(f"{path} is not a valid run config ({err}); fix or delete it") from None


def split_script_overrides(overrides: Sequence[str], script_keys: Sequence[str], example: str = "save_path=run1"
                           ) -> tuple[list[str], dict[str, Any]]:
    """Split ``key=value`` items into run-config overrides and a script's own options.

    Scripts such as visualize.py and evaluate.py take a run config plus keys of their own
    (``script_keys``, which win over a run-config key of the same name); the first list goes to
    :func:`load_config`, the dict is the parsed rest.

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
    except Exception as err:  # OmegaConf's grammar errors and yaml's parser errors
        raise ConfigError(f"cannot parse {own_items}: {_first_line(err)}") from None
    return config_items, own  # type: ignore[return-value]


def help_text() -> str:
    """Every section and key with its default and meaning (``--help-config``)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for name, default, text in fields_help(cls):
            shown = default if isinstance(default, str) else json.dumps(default)
            lines.append(f"  {name}: {shown}" + (f"    # {text}" if text else ""))
    return "\n".join(lines)


__all__ = ["KNOWN_KEYS", "KEY_SECTIONS", "REMOVED_KEYS", "RunConfig", "SECTIONS", "closest_key", "config_from_dict",
           "help_text", "load_config", "saved_run_config", "split_script_overrides", "to_yaml"]
