"""Runs the released STAG4D code beside ours (tests/test_released_equivalence.py).

The released code (github.com/zeng-yifei/STAG4D at commit 9aa21c9, no license) is never copied
here: its files are imported from a checkout named by the environment variable
``STAG4D_RELEASED``, and the few statements of its trainer that are not functions of their own are
compiled from its ``main.py`` as they stand (:func:`released_statements`).

* Isolation: the released modules use bare names that are also ours (``cam_utils``, ``guidance``,
  ``main``, ``visualize``) or generic (``zero123``, ``deform``). :class:`ReleasedCode` imports
  them with the checkout first on ``sys.path`` and our same-named modules hidden from
  ``sys.modules``, keeps them under the private package name ``_stag4d_released``, and puts
  ``sys.path`` and ``sys.modules`` back afterwards. Calls into released code that import lazily run
  inside :meth:`ReleasedCode.active`.
* Stand-ins, for modules that are NOT on a compared path (every stand-in raises if it is used,
  except where a test gives it a behaviour it then states): the GUI (dearpygui, tkinter's ``W``),
  rembg, streamlit and SAM's ``app``, the CUDA extensions when they do not import (diff_gauss,
  simple_knn), einops and torchvision when missing. torchvision's ``to_pil_image`` IS on the
  CLIP-preprocessing path; when torchvision is missing its stand-in applies torchvision's rule for
  a float tensor as read in its source (``pic.mul(255).byte()``: truncation, then HWC, mode RGB).
* CUDA on the CPU: the released model code names ``"cuda"`` in tensor constructors and calls
  ``.cuda()``; :func:`cuda_as_cpu` maps both to the CPU for the duration of a call (the arithmetic
  is untouched).
* The same draws: the released code's ``np.random`` and torch draws are recorded as it makes them
  (:class:`RecordingRandom`, :class:`Recorder`) and handed to ours (:class:`ScriptedRng` for the
  trainer's sampling, in its order: :func:`our_draw_script`; ``SDSNoise`` for the SDS).
* Our state from theirs: :func:`copy_released_gaussians`, :func:`released_deformation_state`,
  :func:`inject_released_embeddings`; a released function's locals at its return:
  :func:`locals_at_return`. :func:`torch_rasterizer_as_diff_gauss` puts our rasterizer behind the
  released diff_gauss calls for a CPU run of the training-step comparison.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

RELEASED_ENV = "STAG4D_RELEASED"
PINNED_COMMIT = "9aa21c9"
PACKAGE = "_stag4d_released"
# git blob hashes at the pinned commit of the files the tests run (git ls-tree 9aa21c9)
PINNED_BLOBS = {
    "main.py": "53d258f7d06b800bd2a4bf1bb78a6120130bbed9",
    "cam_utils.py": "162578d15f4afcf4568c38fff2f44415598be1f2",
    "deform.py": "7f825af82faca4e8e6658a89f37ef5b407471828",
    "gs_renderer_4d.py": "66aca5644bdcc6df420797022f584016939fbd79",
    "dataset_4d.py": "e1751a90b4458b66f78d2c80a53faafb8f9b00c2",
    "sh_utils.py": "bbca7d192aa3a7edf8c5b2d24dee535eac765785",
    "zero123.py": "158e31ee4f877c11dda9118b382b2e226bf45e3a",
    "guidance/zero123_4d_utils.py": "3fc821ed4c6cb826bdb5eb4aa33f4a15e2229cd8",
    "guidance/zero123pp/pipeline.py": "ebb9b820badc33c2cd706fac840a2294cd6c6796",
    "scripts/gen_mv.py": "915ed2c9a6043b6f9ac9076d1a5e3237e5ac8ab9",
    "configs/stag4d.yaml": "42730818b81d8bacdc47ac2d8daae1718dc5449f",
}
# Top-level names of the released modules (and of the ones it imports from its own folders).
RELEASED_TOP_LEVEL = ("main", "visualize", "cam_utils", "sh_utils", "zero123", "gs_renderer_4d", "dataset_4d",
                      "deform", "guidance", "app")


def git_blob_sha1(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def checkout_problems(root: str) -> list[str]:
    """Files of ``root`` that are missing or differ from the pinned commit (empty: the right checkout)."""
    problems = []
    for rel, blob in PINNED_BLOBS.items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} missing")
        elif git_blob_sha1(path) != blob:
            problems.append(f"{rel} differs from {PINNED_COMMIT}")
    return problems


# ----------------------------------------------------------------------------------------------
# stand-ins


class StandIn(types.ModuleType):
    """A module whose every attribute is a function that fails: it must not be on a compared path."""

    def __init__(self, name: str, **attrs: Any):
        super().__init__(name)
        self.__dict__.update(attrs)
        self.__path__ = []  # a package, so that its submodules can be stood in too

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{attr} is a test stand-in (off the compared path) and was called")

        return unavailable


class InertTransform:
    """A torchvision transform stand-in that can be built (the released pipeline builds some in a
    class body) but not applied."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("a torchvision transform stand-in (off the compared path) was applied")


def torchvision_to_pil_image(pic: torch.Tensor, mode: str | None = None):
    """torchvision.transforms.functional.to_pil_image for a [C, H, W] tensor, by its source's rule:
    a floating tensor becomes ``pic.mul(255).byte()`` (x * 255 truncated), then HWC, PIL mode RGB."""
    from PIL import Image

    if pic.is_floating_point() and mode != "F":
        pic = pic.mul(255).byte()
    array = np.transpose(pic.cpu().numpy(), (1, 2, 0))
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # missing, or a compiled extension built for something else
        return False


def stand_ins(use_cuda_extensions: bool = False) -> dict[str, types.ModuleType]:
    """The stand-in modules by name (see the module docstring)."""
    out: dict[str, types.ModuleType] = {
        "dearpygui": StandIn("dearpygui"),
        "dearpygui.dearpygui": StandIn("dearpygui.dearpygui"),
        "tkinter": StandIn("tkinter", W="w"),  # deform.py: `from tkinter import W` (unused)
        "rembg": StandIn("rembg"),
        "streamlit": StandIn("streamlit"),
        "app": StandIn("app", SAMAPI=StandIn("app.SAMAPI")),  # gen_mv.py's SAM wrapper
    }
    if not (use_cuda_extensions and _importable("diff_gauss")):
        out["diff_gauss"] = StandIn("diff_gauss")
    if not (use_cuda_extensions and _importable("simple_knn._C")):
        out["simple_knn"] = StandIn("simple_knn")
        out["simple_knn._C"] = StandIn("simple_knn._C")
    if not _importable("einops"):
        out["einops"] = StandIn("einops")
    if not _importable("torchvision"):
        functional = StandIn("torchvision.transforms.functional", to_pil_image=torchvision_to_pil_image)
        transforms = StandIn("torchvision.transforms", functional=functional, Compose=InertTransform,
                             ToTensor=InertTransform, Normalize=InertTransform)
        utils = StandIn("torchvision.utils")
        out.update({"torchvision": StandIn("torchvision", transforms=transforms, utils=utils),
                    "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
                    "torchvision.utils": utils})
    return out


# ----------------------------------------------------------------------------------------------
# importing the released modules


class ReleasedCode:
    """The released checkout at ``root``: its modules, imported in isolation (module docstring).

    ``rasterizer``: a module to import as ``diff_gauss`` instead (the CPU dry run of the GPU step
    test: :func:`torch_rasterizer_as_diff_gauss`).
    """

    def __init__(self, root: str, use_cuda_extensions: bool = False, rasterizer: types.ModuleType | None = None):
        self.root = os.path.abspath(root)
        self.stand_ins = stand_ins(use_cuda_extensions)
        if rasterizer is not None:
            self.stand_ins["diff_gauss"] = rasterizer
        self.modules: dict[str, types.ModuleType] = {}
        if PACKAGE not in sys.modules:
            package = types.ModuleType(PACKAGE)
            package.__path__ = []
            sys.modules[PACKAGE] = package

    def _is_released(self, module: Any) -> bool:
        places = [getattr(module, "__file__", None)]
        try:  # packages: their folders (a namespace package has no file)
            places += [p for p in module.__path__ if isinstance(p, str)]
        except Exception:  # no __path__, or a namespace path that cannot be recomputed
            pass
        return any(isinstance(p, str) and os.path.abspath(p).startswith(self.root + os.sep) for p in places)

    @contextlib.contextmanager
    def active(self):
        """Bare released names resolve to the released modules (and stand-ins) inside this block."""
        saved_path = list(sys.path)
        hidden = {name: module for name, module in sys.modules.items()
                  if name.split(".")[0] in RELEASED_TOP_LEVEL or name in self.stand_ins}
        for name in hidden:
            del sys.modules[name]
        # the released guidance/ has no __init__.py: without this explicit package our guidance/
        # (a regular package) would win the import
        guidance = self.modules.get("guidance")
        if guidance is None:
            guidance = types.ModuleType("guidance")
            guidance.__path__ = [os.path.join(self.root, "guidance")]
            guidance.__file__ = os.path.join(self.root, "guidance", "__init__.py")
            self.modules["guidance"] = guidance
        sys.modules.update(self.stand_ins)
        sys.modules.update(self.modules)
        sys.path.insert(0, self.root)
        try:
            yield self
        finally:
            released = [name for name, module in list(sys.modules.items()) if not name.startswith(PACKAGE)
                        and (module is guidance or self._is_released(module))]
            for name in released:
                self.modules[name] = sys.modules[f"{PACKAGE}.{name}"] = sys.modules.pop(name)
            for name, module in self.stand_ins.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
            sys.modules.update(hidden)
            sys.path[:] = saved_path

    def module(self, name: str) -> types.ModuleType:
        """The released module ``name`` (e.g. ``"deform"``, ``"guidance.zero123_4d_utils"``), imported once."""
        if name not in self.modules:
            with self.active():
                importlib.import_module(name)
        return self.modules[name]

    def script(self, relpath: str) -> types.ModuleType:
        """A released script (not importable by name, e.g. ``scripts/gen_mv.py``) loaded from its file."""
        name = os.path.splitext(relpath)[0].replace("/", ".")
        if name not in self.modules:
            with self.active():
                spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", os.path.join(self.root, relpath))
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            self.modules[name] = module
        return self.modules[name]

    def path(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)


# ----------------------------------------------------------------------------------------------
# running released code that names "cuda" on the CPU


def _on_cpu(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _TimingEvent:
    """``torch.cuda.Event`` on the CPU (the released trainer times its step; nothing compared)."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs) -> None:
        pass

    def elapsed_time(self, other) -> float:
        return 0.0


class CpuCuda(types.ModuleType):
    """``torch.cuda`` on the CPU: timing events and synchronization do nothing."""

    Event = _TimingEvent

    def __init__(self):
        super().__init__("torch.cuda")

    @staticmethod
    def synchronize(*args, **kwargs) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(torch.cuda, name)


class CpuTorch(types.ModuleType):
    """``torch`` as a released module sees it on the CPU: functions called with ``device="cuda"``
    get the CPU, ``torch.cuda`` is :class:`CpuCuda`; everything else is torch itself."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = CpuCuda()

    def __getattr__(self, name: str):
        value = getattr(torch, name)
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
            @functools.wraps(value)
            def on_cpu(*args, **kwargs):
                if "device" in kwargs:
                    kwargs["device"] = _on_cpu(kwargs["device"])
                return value(*args, **kwargs)

            return on_cpu
        return value


@contextlib.contextmanager
def cuda_as_cpu(*modules: types.ModuleType):
    """Inside: the ``torch`` of each given module is :class:`CpuTorch`, ``Tensor.cuda()`` returns the
    tensor and ``Tensor.to("cuda")`` stays on the CPU."""
    saved = [(module, module.__dict__.get("torch")) for module in modules]
    original_cuda, original_to = torch.Tensor.cuda, torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple(_on_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return original_to(self, *args, **kwargs)

    for module in modules:
        module.torch = CpuTorch()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = original_cuda, original_to
        for module, value in saved:
            module.torch = value


# ----------------------------------------------------------------------------------------------
# statements of the released trainer that are not functions of their own


@functools.lru_cache(maxsize=None)
def released_statements(path: str, function: str, starts: tuple[str, ...]) -> types.CodeType:
    """The statements of ``function`` (``"Class.method"``) in ``path`` whose first line begins with
    one of ``starts``, compiled as they stand (file order, the file's line numbers). Each start must
    match exactly one statement, so a changed file fails loudly instead of running something else."""
    with open(path) as f:
        source = f.read()
    lines = source.splitlines()
    node: ast.AST = ast.parse(source, path)
    for part in function.split("."):
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
    statements = [n for n in ast.walk(node) if isinstance(n, ast.stmt) and n is not node]
    chosen = []
    for start in starts:
        matches = [n for n in statements if lines[n.lineno - 1][n.col_offset:].startswith(start)]
        if len(matches) != 1:
            raise LookupError(f"{path}: {len(matches)} statements of {function} begin with {start!r}")
        chosen.append(matches[0])
    chosen.sort(key=lambda n: (n.lineno, n.col_offset))
    return compile(ast.Module(body=chosen, type_ignores=[]), path, "exec")


class RecordingRandom:
    """``np.random`` for released statements: draws from a seeded RandomState and records every
    draw as ``(function, args, value)``."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed)
        self.draws: list[tuple[str, tuple, Any]] = []

    def randint(self, *args):
        value = int(self.state.randint(*args))
        self.draws.append(("randint", args, value))
        return value

    def rand(self, *args):
        value = float(self.state.rand(*args))
        self.draws.append(("rand", args, value))
        return value


def numpy_with_random(random: RecordingRandom) -> types.ModuleType:
    """numpy whose ``random`` is ``random``."""
    module = types.ModuleType("numpy")
    module.__dict__.update({k: v for k, v in np.__dict__.items() if not k.startswith("__")})
    module.random = random
    return module


class ScriptedRng:
    """A random.Random stand-in for our trainer that returns given values, checking each call.

    ``script`` is a list of ``(method, args, value)``: ``("randrange", (a, b), v)`` or
    ``("random", (), u)``; every call must match the next entry's method and arguments.
    """

    def __init__(self, script: Iterable[tuple[str, tuple, Any]]):
        self.script = list(script)
        self.position = 0

    def _next(self, method: str, args: tuple):
        if self.position >= len(self.script):
            raise AssertionError(f"our trainer drew more than the released code: {method}{args}")
        expected_method, expected_args, value = self.script[self.position]
        if (method, tuple(args)) != (expected_method, tuple(expected_args)):
            raise AssertionError(f"draw {self.position}: ours {method}{tuple(args)}, released "
                                 f"{expected_method}{tuple(expected_args)}")
        self.position += 1
        return value

    def randrange(self, *args):
        return self._next("randrange", args)

    def random(self):
        return self._next("random", ())

    @property
    def exhausted(self) -> bool:
        return self.position == len(self.script)


# ----------------------------------------------------------------------------------------------
# copying released weights into our modules


def hexplane_index(plane: str) -> int:
    """Index in the released ParameterList of one scale (the pairs of (x, y, z, t)) of our plane name."""
    return ("xy", "xz", "xt", "yz", "yt", "zt").index(plane)


# released deformation_net head -> our DeformationField head
HEADS = (("pos_deform", "position_head"), ("scales_deform", "scale_head"), ("rotations_deform", "rotation_head"),
         ("opacity_deform", "opacity_head"))


def released_deformation_state(released_net: torch.nn.Module, grad: bool = False) -> dict[str, torch.Tensor | None]:
    """A released ``deform_network``'s values (or gradients, None where it has none) in the layout of
    our :class:`DeformationField`'s state dict.

    Released planes: ``deformation_net.grid.grids[s][i]`` [1, C, res_b, res_a] for the pairs
    xy, xz, xt, yz, yt, zt; ours: ``grid.spatial_planes.s`` [3, C, R, R] (xy, xz, yz) and
    ``grid.time_planes.s`` [3, C, T, R] (xt, yt, zt). MLP: ``feature_out.0`` -> ``feature_out``, the
    heads by :data:`HEADS`. The released ``timenet`` is never used in its forward: not mapped.
    """
    def value(p: torch.Tensor) -> torch.Tensor | None:
        return p.grad if grad else p.detach()

    def stacked(grids, names) -> torch.Tensor | None:
        parts = [value(grids[hexplane_index(name)]) for name in names]
        return None if any(p is None for p in parts) else torch.stack([p[0] for p in parts])

    net = released_net.deformation_net
    state: dict[str, torch.Tensor | None] = {}
    for s, grids in enumerate(net.grid.grids):
        state[f"grid.spatial_planes.{s}"] = stacked(grids, ("xy", "xz", "yz"))
        state[f"grid.time_planes.{s}"] = stacked(grids, ("xt", "yt", "zt"))
    for name, p in net.feature_out[0].named_parameters():
        state[f"feature_out.{name}"] = value(p)
    for theirs, ours in HEADS:
        for name, p in getattr(net, theirs).named_parameters():
            state[f"{ours}.{name}"] = value(p)
    return state


@torch.no_grad()
def copy_released_deformation(released_net: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Our DeformationField takes a released ``deform_network``'s values (every tensor of ours)."""
    ours.load_state_dict(released_deformation_state(released_net), strict=True)


@torch.no_grad()
def copy_released_gaussians(gaussians: Any, model: Any) -> None:
    """Our GaussianModel4D takes copies of a released GaussianModel's Gaussians and deformation
    network (copies: the released optimizer changes its tensors in place). Build the optimizer
    afterwards (new parameters)."""
    values = (gaussians._xyz, gaussians._features_dc, gaussians._features_rest, gaussians._scaling,
              gaussians._rotation, gaussians._opacity[:, 0])
    model.set_gaussians(*(value.detach().clone() for value in values))
    copy_released_deformation(gaussians._deformation, model.deformation)


def inject_released_embeddings(theirs: Any, ours: Any) -> None:
    """Our Zero123 guidance takes the released one's condition embeddings (``embedding_list``, one
    entry per frame: [[clip, latent], [[clip, latent] per anchor]]); slot 0 the reference, 1 + k anchor k."""
    ours.clip_embeds = torch.stack([torch.cat([c] + [e[0] for e in extra]) for (c, _), extra in theirs.embedding_list])
    ours.cond_latents = torch.stack([torch.cat([v] + [e[1] for e in extra]) for (_, v), extra in theirs.embedding_list])


# ----------------------------------------------------------------------------------------------
# recording the released draws, and replaying them in ours


def split_sample_draws(draws: Sequence[tuple[str, tuple, Any]], batch_size: int, coarse: bool) -> list[dict]:
    """The np.random draws of one released train_step, per sample: ``t`` (fine stage only), ``ver``,
    ``hor``, ``cond`` (only where the azimuth is outside (-30, 30)), ``bg``, each (function, args, value)."""
    samples, position = [], 0
    for _ in range(batch_size):
        sample = {}
        for key in ([] if coarse else ["t"]) + ["ver", "hor"]:
            sample[key] = draws[position]
            position += 1
        hor = sample["hor"][2]
        if not (-30 < hor < 30):
            sample["cond"] = draws[position]
            position += 1
        sample["bg"] = draws[position]
        position += 1
        samples.append(sample)
    if position != len(draws):
        raise AssertionError(f"{len(draws) - position} released draws left over")
    return samples


def our_draw_script(samples: Sequence[dict]) -> list[tuple[str, tuple, Any]]:
    """The released draws in the order and form our Trainer.sample_batch draws them (ScriptedRng):
    the frames of all samples first, then per sample the elevation offset, the azimuth, the
    background and (where drawn) the conditioning. The background's u is passed as is (released
    white when u > 0.5, ours black when u < 0.5); the conditioning's as 1 - u (released: the
    reference when u > 0.4, ours when u < 0.6)."""
    script = []
    for sample in samples:
        if "t" in sample:
            name, args, value = sample["t"]
            if (name, args[0]) != ("randint", 0):
                raise AssertionError(f"the released frame draw is {name}{args}, expected randint(0, T)")
            script.append(("randrange", tuple(args[1:]), value))
    for sample in samples:
        script += [("randrange", tuple(sample["ver"][1]), sample["ver"][2]),
                   ("randrange", tuple(sample["hor"][1]), sample["hor"][2]), ("random", (), sample["bg"][2])]
        if "cond" in sample:
            script.append(("random", (), 1.0 - sample["cond"][2]))
    return script


class Recorder(types.ModuleType):
    """A module (``torch``, ``torch.nn.functional``) as a released module sees it while recorded:
    the functions named in ``names`` append ``(name, result)`` to ``records``; everything else is
    the module itself."""

    def __init__(self, module: types.ModuleType, names: Sequence[str], records: list):
        super().__init__(module.__name__)
        self.module, self.names, self.records = module, tuple(names), records

    def __getattr__(self, name: str):
        value = getattr(self.module, name)
        return recording(value, self.records, name) if name in self.names else value


def recording_torch(draws: list) -> Recorder:
    """``torch`` whose ``randint`` and ``randn_like`` record what they draw (the released SDS draws)."""
    return Recorder(torch, ("randint", "randn_like"), draws)


def recording(function: Callable, draws: list, name: str) -> Callable:
    """``function`` that also appends ``(name, result)`` to ``draws``."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        value = function(*args, **kwargs)
        draws.append((name, value))
        return value

    return wrapper


@contextlib.contextmanager
def locals_at_return(function: Callable):
    """Inside: the local variables of ``function`` when its call returns are kept (the dict yielded,
    last call), through a trace hook on that function's frames only: the function runs unchanged.
    (It replaces any other trace function for the duration: not under a debugger.)"""
    code = function.__code__
    captured: dict[str, Any] = {}
    previous = sys.gettrace()

    def on_return(frame, event, arg):
        if event == "return":
            captured.clear()
            captured.update(frame.f_locals)
        return on_return

    def on_call(frame, event, arg):
        return on_return if frame.f_code is code else None

    sys.settrace(on_call)
    try:
        yield captured
    finally:
        sys.settrace(previous)


def max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = (a.detach() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))).double()
    b = (b.detach() if torch.is_tensor(b) else torch.as_tensor(np.asarray(b))).double()
    return float((a - b).abs().max()) if a.numel() else 0.0


def max_rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """max |a - b| / max |b|."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


@contextlib.contextmanager
def released_renderer_on_cpu(released: ReleasedCode, sh_degree: int, num_pts: int,
                             deformation: torch.nn.Module | None = None):
    """A released ``Renderer`` whose Gaussians were initialized by its own ``initialize`` (np.random
    draws, ``create_from_pcd(pcd, 10)``) on the CPU; inside the block its code runs on the CPU too.

    ``distCUDA2`` (simple-knn, CUDA only) is our k-NN there: it only sets the initial scales, which
    the tests overwrite or take as given (tests/test_knn_cuda.py compares the two). ``deformation``:
    the ``deform_network`` its GaussianModel gets instead of building a new one (building one takes
    seconds on the CPU: its planes hold 33M values).
    """
    from stag4d.gaussians import knn

    renderer_module = released.module("gs_renderer_4d")
    deform_module = released.module("deform")
    saved = renderer_module.distCUDA2, renderer_module.deform_network
    renderer_module.distCUDA2 = lambda points: knn.mean_sq_dist_knn3(points, backend="torch")
    if deformation is not None:
        renderer_module.deform_network = lambda: deformation
    try:
        with cuda_as_cpu(renderer_module, deform_module):
            renderer = renderer_module.Renderer(sh_degree=sh_degree)
            renderer.initialize(num_pts=num_pts)
            yield renderer
    finally:
        renderer_module.distCUDA2, renderer_module.deform_network = saved


class Measurements:
    """The largest value of each measured difference (the README's table); written as JSON to the
    file named by ``STAG4D_EQUIVALENCE_REPORT`` when set."""

    def __init__(self):
        self.values: dict[str, float] = {}

    def __call__(self, name: str, value: float) -> float:
        value = float(value)
        self.values[name] = max(self.values.get(name, value), value)
        return value

    def write(self, path: str | None) -> None:
        if path:
            import json

            with open(path, "w") as f:
                json.dump(dict(sorted(self.values.items())), f, indent=1)


def torch_rasterizer_as_diff_gauss() -> types.ModuleType:
    """diff_gauss's interface over our torch rasterizer, for a CPU dry run of the GPU step test.

    Both trainers then rasterize with our code, so that run compares everything around the
    rasterizer (and exercises the GPU test's harness), not diff_gauss. The released code reads the
    screen-space gradient from the ``means2D`` it passes in (NDC units); here a hook on our render's
    pixel-unit ``means2d`` hands it over times (W/2, H/2).
    """
    import math

    from cam_utils import Camera
    from stag4d.rasterizer import render
    from stag4d.rasterizer.types import GaussianParams

    class GaussianRasterizationSettings(types.SimpleNamespace):
        pass

    class GaussianRasterizer:
        def __init__(self, raster_settings):
            self.settings = raster_settings

        def __call__(self, means3D, means2D, shs=None, colors_precomp=None, opacities=None, scales=None,
                     rotations=None, cov3Ds_precomp=None):
            s = self.settings
            camera = Camera(world_to_camera=s.viewmatrix.T.contiguous(), fovy=math.degrees(2 * math.atan(s.tanfovy)),
                            width=int(s.image_width), height=int(s.image_height))
            gaussians = GaussianParams(means=means3D, log_scales=torch.log(scales), quats=rotations,
                                       opacity_logits=torch.logit(opacities[:, 0]), sh=shs, colors=colors_precomp)
            out = render(gaussians, camera, s.bg, backend="torch", scale_modifier=s.scale_modifier)
            to_ndc = torch.tensor([camera.width / 2.0, camera.height / 2.0], dtype=means2D.dtype, device=means2D.device)

            def hand_over(grad: torch.Tensor) -> None:
                ndc = torch.zeros_like(means2D)
                ndc[:, :2] = grad * to_ndc
                means2D.grad = ndc if means2D.grad is None else means2D.grad + ndc

            if out.means2d.requires_grad:
                out.means2d.register_hook(hand_over)
            return out.image, out.depth, None, out.alpha, out.radii, None

    module = types.ModuleType("diff_gauss")
    module.GaussianRasterizationSettings = GaussianRasterizationSettings
    module.GaussianRasterizer = GaussianRasterizer
    return module
