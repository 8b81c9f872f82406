"""STAG4D's temporal anchor for Zero123++ (SPEC section 9).

While frame 0 is generated, every self-attention call of the denoising UNet (every ``attn1``
layer, every step) hands its key/value input to a :class:`TemporalAnchor` in mode ``"record"``:
own tokens ``[B, L, C]`` followed by the reference tokens ``[B, Lr, C]``. The record is kept in
fp16 on the CPU (``storage="host"``) or on the GPU it comes from (``storage="device"``); both hold
the same values, so where they live changes speed and memory only. For every later frame the same
call, in mode ``"replay"``, replaces the own-token part by the mean of its own tokens and frame
0's recorded own tokens; the reference part is left alone. Mode ``"off"`` passes everything
through (plain Zero123++).

The state is explicit: the script creates one anchor, passes it to every generation and switches
its mode; nothing lives at module level. Records are keyed by ``(layer name, step index)``, so
neither the order of the layers nor the number of calls per step matters. ``L`` is the token
count of the hidden states the call attends from (the query input), never derived from channel
counts, so any output size works.

Classifier-free guidance runs the unconditional and the conditional branch as one batch
``[uncond, cond]``; a record holds the whole batch and the replay averages element ``b`` with
recorded element ``b``, so each branch is anchored to the same branch of frame 0.

Several later frames can be replayed in one batch (``frames=N``): the pipeline lays the batch out
branch-major, ``[uncond_1..uncond_N, cond_1..cond_N]``, and the replay broadcasts the recorded
``[uncond, cond]`` over the N frames of each branch (a view, no copy of the record per frame), so
every frame gets exactly the blend it would get alone. Frame 0 may be recorded in a batch too, as
the first frame of each branch: its rows pass through untouched and are stored, and the other
frames of that batch replay the stored values at once (the same arithmetic as in a later batch,
from the same fp16 record), which saves generating frame 0 on its own.

Memory of the records (:func:`record_bytes`): steps x batch x 2 bytes x sum over the ``attn1``
calls of one pass of (L + Lr) x C. For v1.1 at full size (640x960 output = 120x80 latent,
320x320 condition = 40x40 latent, 16 self-attentions, batch 2, 75 steps) that is
75 x 2 x 2 x (27,072,000 + 4,512,000) = 9,475,200,000 bytes = 8.82 GiB, as measured on the GPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

MODES = ("off", "record", "replay")
BLENDS = ("own", "released")
STORAGES = ("host", "device")
RELEASED_TOKENS_AT_320 = 9600  # the released processor's replace_dim at 320 channels (80 x 120 latents)


class AnchorMismatch(RuntimeError):
    """A replayed frame does not match frame 0's records (other size, steps or guidance)."""


class TemporalAnchor:
    """Records frame 0's self-attention key/value inputs and blends them into later frames.

    Args:
        mode: ``"record"`` (frame 0), ``"replay"`` (later frames) or ``"off"``.
        storage_dtype: dtype of the records (fp16 as in the released code).
        storage: ``"host"``: the records live on the CPU (8.82 GiB at full size), copied to the
            GPU at every replayed call; ``"device"``: they stay on the device of the key/value
            input that was recorded (no copies; costs that much GPU memory). Same values.
        pin_memory: keep host records in page-locked memory when they come from a GPU, so that
            the copies to and from the GPU run as DMA without staging (the copy to the CPU does
            not even stall the GPU). ``None``: pin when CUDA is available.
        blend: ``"own"`` (ours): average the own tokens (L, from the hidden states) with frame
            0's; ``"released"``: average the first ``int(9600 / (C // 320) ** 2)`` tokens of the
            whole key/value input, as the released processor; that is the own tokens of every
            layer at the 640x960 output, except the UNet's mid-block (C = 1280: 600 >= 150 own +
            25 reference tokens), where the reference tokens are averaged too.
    """

    def __init__(self, mode: str = "record", storage_dtype: torch.dtype = torch.float16,
                 pin_memory: bool | None = None, blend: str = "own", storage: str = "host"):
        if blend not in BLENDS:
            raise ValueError(f"blend={blend!r}: use one of {', '.join(BLENDS)}")
        if storage not in STORAGES:
            raise ValueError(f"storage={storage!r}: use one of {', '.join(STORAGES)}")
        self.blend = blend
        self.storage = storage
        self.mode = _check_mode(mode)
        self.storage_dtype = storage_dtype
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        # (layer name, step) -> (own tokens [B, L, C], reference tokens [B, Lr, C]) where ``storage`` says.
        # The two parts are stored apart so that the part a replay reads is one contiguous block.
        self.records: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._arena = PinnedArena()

    def set_mode(self, mode: str) -> None:
        self.mode = _check_mode(mode)

    def clear(self) -> None:
        self.records.clear()
        self._arena = PinnedArena()

    @property
    def nbytes(self) -> int:
        """Bytes held by the records."""
        return sum(t.numel() * t.element_size() for parts in self.records.values() for t in parts)

    @property
    def reserved_bytes(self) -> int:
        """Host bytes reserved for the records (page-locked slabs, or the records themselves)."""
        return self._arena.reserved_bytes if self._arena.reserved_bytes else self.nbytes

    def __len__(self) -> int:
        return len(self.records)

    def recorded_kv(self, layer: str, step: int) -> torch.Tensor:
        """Frame 0's key/value input [B, L + Lr, C] of one call, as recorded (on the CPU)."""
        return torch.cat(self.records[(layer, step)], dim=1).cpu()

    def __call__(self, layer: str, step: int, kv_input: torch.Tensor, own_tokens: int, frames: int = 1) -> torch.Tensor:
        """The key/value input [B, L + Lr, C] this self-attention call should use.

        Args:
            layer: name of the attention layer (the key of its processor in the UNet).
            step: denoising step index.
            kv_input: own tokens [B, L, C] followed by the reference tokens [B, Lr, C].
            own_tokens: L, the token count of the hidden states the call attends from.
            frames: how many frames the batch holds, branch-major (B = branches x frames).
        """
        if self.mode == "off":
            return kv_input
        key = (layer, step)
        if self.mode == "record":
            if key in self.records:
                raise AnchorMismatch(
                    f"{layer} at step {step} was recorded twice: clear() the anchor before recording another frame 0"
                )
            if frames < 1 or kv_input.shape[0] % frames:
                raise AnchorMismatch(f"{layer} at step {step}: a batch of {kv_input.shape[0]} rows cannot hold "
                                     f"{frames} frames in every guidance branch")
            # branch-major [branches, frames, ...]: frame 0 is the first frame of every branch
            grouped = kv_input.unflatten(0, (-1, frames))
            frame0 = grouped[:, 0].detach()
            self.records[key] = (self._store(frame0[:, :own_tokens]), self._store(frame0[:, own_tokens:]))
            if frames == 1:
                return kv_input
            # the frames after frame 0 in its batch replay what was just stored, as a later batch would
            later = self._replay(key, grouped[:, 1:].flatten(0, 1), own_tokens, frames - 1)
            return torch.cat([grouped[:, :1], later.unflatten(0, (-1, frames - 1))], dim=1).flatten(0, 1)
        return self._replay(key, kv_input, own_tokens, frames)

    def _store(self, part: torch.Tensor) -> torch.Tensor:
        """Copy [B, n, C] to a contiguous tensor in ``storage_dtype``: on the CPU (asynchronously when
        pinned) or, with ``storage="device"``, on the part's own device."""
        if self.storage == "device":
            # a new tensor, never a view: a view would keep the whole key/value input alive
            return torch.empty(part.shape, dtype=self.storage_dtype, device=part.device).copy_(part)
        pin = self.pin_memory and part.is_cuda
        if pin:
            out = self._arena.take(part.shape, self.storage_dtype)
        else:
            out = torch.empty(part.shape, dtype=self.storage_dtype)
        # A GPU -> pinned copy is queued on the current stream: the replay's copy back is queued
        # on the same stream later, so it always sees the finished record.
        out.copy_(part, non_blocking=pin)
        return out

    def _replay(self, key: tuple[str, int], kv_input: torch.Tensor, own_tokens: int, frames: int) -> torch.Tensor:
        if key not in self.records:
            raise AnchorMismatch(
                f"no frame-0 record for {key[0]} at step {key[1]}: generate frame 0 with the anchor in "
                "'record' mode first, with the same number of steps"
            )
        recorded_own, recorded_ref = self.records[key]
        branches = recorded_own.shape[0]  # 2 with classifier-free guidance ([uncond, cond]), else 1
        if frames < 1 or kv_input.shape[0] != branches * frames or \
                tuple(recorded_own.shape[1:]) != (own_tokens, kv_input.shape[2]):
            raise AnchorMismatch(
                f"{key[0]} at step {key[1]}: frame 0 recorded own tokens {tuple(recorded_own.shape)}, this batch of "
                f"{frames} frame(s) has {(kv_input.shape[0], own_tokens, kv_input.shape[2])}: use the same output "
                "size and guidance for every frame"
            )
        # Host records: contiguous and pinned, one DMA copy per call (measured: prefetching it on a
        # side stream saved nothing within noise at full size on an H100); device records in the
        # compute dtype: no copy at all.
        frame0 = _to_input(recorded_own, kv_input)
        count = own_tokens
        if self.blend == "released":
            count = min(released_blend_tokens(kv_input.shape[2]), kv_input.shape[1])
            if count > own_tokens:  # the mid-block at full size: reference tokens too
                frame0 = torch.cat([frame0, _to_input(recorded_ref, kv_input)], dim=1)
            frame0 = frame0[:, :count]
        if frames == 1:
            blended = (kv_input[:, :count] + frame0) / 2
        else:  # [branches * frames, ...] -> [branches, frames, ...]; the record broadcasts over the frames
            grouped = kv_input.unflatten(0, (branches, frames))
            blended = ((grouped[:, :, :count] + frame0[:, None]) / 2).flatten(0, 1)
        return torch.cat([blended, kv_input[:, count:]], dim=1)


def _to_input(record: torch.Tensor, kv_input: torch.Tensor) -> torch.Tensor:
    """``record`` on the device and in the dtype of ``kv_input`` (itself when it already is)."""
    return record.to(kv_input.device, kv_input.dtype, non_blocking=True)


class PinnedArena:
    """Page-locked host memory handed out from large slabs.

    One pinned allocation per record would be rounded up to a power of two by PyTorch's host
    allocator (up to 2x the memory) and page-locked one by one; slabs waste less than one slab.
    ``pin_memory=False`` carves ordinary memory the same way (for tests without a GPU).
    """

    def __init__(self, slab_bytes: int = 256 * 2**20, align: int = 512, pin_memory: bool = True):
        self.slab_bytes, self.align, self.pin_memory = slab_bytes, align, pin_memory
        self.slabs: list[torch.Tensor] = []
        self.used = 0  # bytes used in the last slab

    @property
    def reserved_bytes(self) -> int:
        return sum(slab.numel() for slab in self.slabs)

    def take(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized pinned CPU tensor of ``shape`` and ``dtype`` (a view into a slab)."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes > self.slab_bytes:
            return torch.empty(tuple(shape), dtype=dtype, pin_memory=self.pin_memory)
        if not self.slabs or self.used + nbytes > self.slab_bytes:
            self.slabs.append(torch.empty(self.slab_bytes, dtype=torch.uint8, pin_memory=self.pin_memory))
            self.used = 0
        start = self.used
        self.used = -(-(start + nbytes) // self.align) * self.align
        return self.slabs[-1][start:start + nbytes].view(dtype).view(tuple(shape))


def released_blend_tokens(channels: int) -> int:
    """The released processor's ``replace_dim``: ``int(9600 / (C // 320) ** 2)`` tokens (C // 320
    taken as at least 1, so that models narrower than Zero123++'s, in tests, do not divide by 0)."""
    return int(RELEASED_TOKENS_AT_320 / max(1, channels // 320) ** 2)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"temporal anchor mode must be one of {MODES}, got {mode!r}")
    return mode


def _ceil_half(n: int, times: int) -> int:
    """Size after ``times`` stride-2 convolutions with padding 1 (kernel 3): ceil(n / 2) each time."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def self_attention_tokens(
    unet_config: dict, latent_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """(tokens, channels) of every ``attn1`` call of one UNet pass, for a latent of ``latent_hw``.

    Follows the UNet2DConditionModel layout: cross-attention down blocks at level i (resolution
    halved i times) with ``layers_per_block`` attentions, the mid block at the deepest level with
    one, cross-attention up blocks with ``layers_per_block + 1``; each attention holds
    ``transformer_layers_per_block`` transformer blocks (one ``attn1`` each).
    """
    channels: Sequence[int] = unet_config["block_out_channels"]
    layers = unet_config.get("layers_per_block", 2)
    depth = unet_config.get("transformer_layers_per_block", 1)
    depth = depth if isinstance(depth, int) else depth[0]
    levels = len(channels)
    height, width = latent_hw

    def tokens(level: int) -> int:
        return _ceil_half(height, level) * _ceil_half(width, level)

    calls: list[tuple[int, int]] = []
    for level, block in enumerate(unet_config["down_block_types"]):
        if "CrossAttn" in block:
            calls += [(tokens(level), channels[level])] * (layers * depth)
    mid_block = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_block and "CrossAttn" in mid_block:
        calls += [(tokens(levels - 1), channels[-1])] * depth
    for j, block in enumerate(unet_config["up_block_types"]):
        level = levels - 1 - j
        if "CrossAttn" in block:
            calls += [(tokens(level), channels[level])] * ((layers + 1) * depth)
    return calls


def record_bytes(
    unet_config: dict,
    latent_hw: tuple[int, int],
    cond_latent_hw: tuple[int, int],
    steps: int,
    batch: int = 2,
    bytes_per_value: int = 2,
) -> int:
    """Bytes of frame 0's records: steps x batch x bytes x sum over attn1 calls of (L + Lr) x C.

    ``batch`` is 2 with classifier-free guidance ([uncond, cond]); ``Lr`` is the token count of
    the reference pass, whose latent is the condition image's (``cond_latent_hw``).
    """
    own = self_attention_tokens(unet_config, latent_hw)
    ref = self_attention_tokens(unet_config, cond_latent_hw)
    per_pass = sum((lo + lr) * c for (lo, c), (lr, _) in zip(own, ref))
    return steps * batch * bytes_per_value * per_pass
