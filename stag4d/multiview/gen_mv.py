"""Zero123++ multi-view anchors of every frame, with STAG4D's temporal anchor (SPEC section 9).

    python scripts/gen_mv.py --path dataset/NAME [--model ID_OR_DIR] [--steps 75] [--seed 42]
        [--guidance 4.0] [--matting rembg|color] [--overwrite] [--no-temporal-anchor]
        [--device cuda|cpu] [--batch-size N] [--anchor-records auto|host|device] [--json FILE]
        [--wait-for FILE [--wait-timeout S]] [--compile] [--channels-last]

1. Frames given directly as ``dataset/NAME/<i>.png`` or ``<i>_rgba.png`` are first copied into
   ``ref/<i>_rgba.png`` (the released code does the same with ``cp``); then the frames are
   ``ref/<i>_rgba.png``, i = 0..T-1, in numeric order. A frame without alpha is matted first.
2. Each frame, composited on grey 127 as Zero123++ expects, goes through Zero123++ v1.1 (75
   steps, guidance 4.0, the same seed for every frame) into a 640x960 grid of six 320x320 views.
   With the temporal anchor (default) frame 0 records its self-attention key/value inputs and
   every later frame blends them into its own (:mod:`stag4d.multiview.temporal_anchor`).
   The later frames depend only on frame 0's records, so the frames are denoised ``--batch-size``
   at a time (8 on CUDA, 1 on the CPU), frame 0 first in the first batch (it records there while
   the others of that batch replay it), each with its own generator seeded with ``--seed``: a
   frame equals the frame generated alone up to float rounding.
3. The grid is cut into its six tiles (tile k at column k % 2, row k // 2, ``cam_utils.tile_box``),
   each tile is matted (``--matting``: rembg as in the released code, or the offline colour key)
   and written atomically as ``zero123/<i>_rgba/<k>.png`` (RGBA). Reading the frames and matting
   and writing the views run on worker threads, beside the GPU's work.

Frames whose six views exist are skipped unless ``--overwrite``. When the anchor is on and frame
0's views exist but a later frame's do not, frame 0 is generated again to record the anchor (its
files are left alone).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cam_utils import tile_box
from stag4d.data import matting
from stag4d.data.frames import list_ref_frames
from stag4d.device import resolve_device
from stag4d.errors import (
    DataError,
    ModelUnavailable,
    TrainingStopped,
    UserError,
    exit_on_user_error,
    quiet_hub_warnings,
)
from stag4d.files import save_image, wait_for_file, write_text
from stag4d.multiview.pipeline import RANDOMNESS, compile_unet_blocks, composite_on_gray, load_pipeline
from stag4d.multiview.temporal_anchor import BLENDS, STORAGES, TemporalAnchor, record_bytes

MATTINGS = ("rembg", "color")
TOP_LEVEL_FRAME = re.compile(r"^(\d+)(?:_rgba)?\.png$")
NUM_VIEWS = 6
CUDA_BATCH_SIZE = 8  # --batch-size default on CUDA (the CPU's is 1)
ANCHOR_RECORDS = ("auto",) + STORAGES
# GPU memory that --anchor-records auto keeps free beside the records: denoising working memory
# per frame of a batch, plus the rest (VAE decoding, allocator slack), both generous for 640x960
WORKING_BYTES_PER_FRAME = 2**30
WORKING_BYTES = 4 * 2**30


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True, help="dataset folder (holds ref/ or the frames themselves)")
    parser.add_argument("--model", default="sudo-ai/zero123plus-v1.1",
                        help="hub id or local folder of Zero123++ in the diffusers layout")
    parser.add_argument("--steps", type=int, default=75, help="denoising steps")
    parser.add_argument("--seed", type=int, default=42, help="seed, the same for every frame")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--matting", choices=MATTINGS, default="rembg", help="matte of the generated views")
    parser.add_argument("--overwrite", action="store_true", help="regenerate frames whose views exist")
    parser.add_argument("--no-temporal-anchor", action="store_true",
                        help="plain Zero123++ per frame (no blending with frame 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--anchor-blend", choices=BLENDS, default="own",
                        help="temporal anchor: average the own tokens with frame 0's (ours), or the first "
                             "9600/(C//320)^2 tokens (released: reference tokens too at the mid-block)")
    parser.add_argument("--randomness", choices=RANDOMNESS, default="seeded",
                        help="seeded: every draw from --seed (ours); released: only the initial latents and the "
                             "sampler noise (the condition latent and reference noise unseeded)")
    parser.add_argument("--no-matte-input", dest="matte_input", action="store_false",
                        help="pass frames without alpha to Zero123++ as they are (released) instead of matting them")
    parser.add_argument("--released", action="store_true",
                        help="the released behaviour: --anchor-blend released --randomness released --no-matte-input")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"frames after frame 0 denoised together, each with its own seeded generator "
                             f"(default: {CUDA_BATCH_SIZE} on CUDA, 1 on the CPU)")
    parser.add_argument("--anchor-records", choices=ANCHOR_RECORDS, default="auto",
                        help="where frame 0's temporal-anchor records live: device (GPU memory, no copies), host "
                             "(page-locked CPU memory, copied to the GPU at every step), auto: device when the GPU "
                             "has room for them and the batch")
    parser.add_argument("--width", type=int, default=640, help="grid width (2 tiles; tests use small sizes)")
    parser.add_argument("--height", type=int, default=960, help="grid height (3 tiles)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the run's timings and memory here, atomically, once every view is on disk "
                             "(for benchmarks, and for a main.py started beside gen_mv with wait_for=FILE)")
    parser.add_argument("--compile", action="store_true",
                        help="CUDA: torch.compile the UNet's ResNet blocks and feed-forward layers, before the wait "
                             "of --wait-for when there is one (off: on an H200 7 to 16%% off the UNet, but its "
                             "warm-up cost more than that inside the whole pipeline)")
    parser.add_argument("--channels-last", action="store_true",
                        help="CUDA: the UNet in channels-last memory format (slower alone; meant with --compile)")
    parser.add_argument("--wait-for", default=None, metavar="FILE",
                        help="load the model first, then wait for FILE before reading the frames (written once the "
                             "frames are on disk; scripts/video_to_4d.py starts gen_mv beside prepare_video this way)")
    parser.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="seconds to wait for --wait-for before giving up (default: %(default)s)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: give at least 1 (75 is the released setting)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give at least 1 (1 generates the frames one by one)")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))) and not args.wait_for:
        raise UserError(f"--json {args.json}: its folder does not exist; create it or give another path")
    if args.wait_timeout <= 0:
        raise UserError(f"--wait-timeout {args.wait_timeout}: give a positive number of seconds")
    if args.width < 2 or args.width % 2 or args.height * 2 != args.width * 3:
        raise UserError(
            f"--width {args.width} --height {args.height}: the grid is 2 x 3 square tiles, so the width must "
            "be even and the height 3/2 of it (640 x 960)"
        )


# --------------------------------------------------------------------------------------------
# frames and files
# --------------------------------------------------------------------------------------------


def copy_top_level_frames(path: str) -> int:
    """Copy ``<path>/<i>.png`` / ``<path>/<i>_rgba.png`` to ``<path>/ref/<i>_rgba.png``; returns the count."""
    if not os.path.isdir(path):
        raise DataError(f"dataset folder {path} does not exist: give the folder that holds ref/ (or the frames)")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png") and os.path.isfile(os.path.join(path, n)))
    for name in names:
        if TOP_LEVEL_FRAME.match(name) is None:
            raise DataError(
                f"{os.path.join(path, name)} is not named <i>.png or <i>_rgba.png: rename it, or move it out "
                f"of {path} (frames given directly in the dataset folder are copied into ref/)"
            )
    if names:
        os.makedirs(os.path.join(path, "ref"), exist_ok=True)
    for name in names:
        frame = int(TOP_LEVEL_FRAME.match(name).group(1))
        shutil.copyfile(os.path.join(path, name), os.path.join(path, "ref", f"{frame}_rgba.png"))
    return len(names)


def view_files(path: str, frame: int) -> list[str]:
    """``<path>/zero123/<frame>_rgba/<k>.png`` for k = 0..5."""
    return [os.path.join(path, "zero123", f"{frame}_rgba", f"{k}.png") for k in range(NUM_VIEWS)]


def has_views(path: str, frame: int) -> bool:
    return all(os.path.isfile(file) for file in view_files(path, frame))


def matte(rgb: np.ndarray, method: str) -> np.ndarray:
    """Alpha [H, W] float32 of a uint8 RGB image [H, W, 3]."""
    return matting.matte_rembg(rgb) if method == "rembg" else matting.matte_color(rgb)


def read_frame(file: str, method: str, matte_input: bool = True) -> np.ndarray:
    """uint8 RGBA [H, W, 4] of a frame; a frame without alpha gets one from ``method`` (or, without
    ``matte_input``, an opaque one: the frame goes to Zero123++ as it is, as in the released code)."""
    try:
        with Image.open(file) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
            array = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{file} cannot be read as an image ({' '.join(str(err).split())}): re-export it as PNG") from None
    if has_alpha:
        return np.ascontiguousarray(array)
    alpha = matte(array, method) if matte_input else np.ones(array.shape[:2], np.float32)
    return matting.apply_alpha(np.ascontiguousarray(array), alpha)


def split_grid(grid: np.ndarray, tile: int) -> list[np.ndarray]:
    """The six tiles [tile, tile, C] of a Zero123++ grid [3 tile, 2 tile, C] (tile k: column k % 2, row k // 2)."""
    tiles = []
    for k in range(NUM_VIEWS):
        top, left, bottom, right = tile_box(k, tile)
        tiles.append(np.ascontiguousarray(grid[top:bottom, left:right]))
    return tiles


def save_views(path: str, frame: int, grid: np.ndarray, tile: int, method: str) -> None:
    """Matte the six tiles of ``grid`` (uint8 RGB) and write them as RGBA PNGs."""
    for file, rgb in zip(view_files(path, frame), split_grid(grid, tile)):
        save_image(file, matting.apply_alpha(rgb, matte(rgb, method)))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def frames_to_run(frames: list[tuple[int, str]], todo: set[int], anchored: bool) -> list[tuple[int, str]]:
    """Frames to generate in order: those in ``todo``, plus frame 0 first when the anchor needs its records."""
    run = [(i, file) for i, file in frames if i in todo]
    if anchored and run and run[0][0] != frames[0][0]:
        run.insert(0, frames[0])
    return run


def batches(run: list[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    """``run`` cut into the batches generated together, ``size`` frames at a time, the last batch
    holding what remains. With the anchor the first batch starts with frame 0, which it records
    while the other frames of that batch replay it."""
    return [run[k:k + size] for k in range(0, len(run), size)]


def anchor_storage(choice: str, pipe, args: argparse.Namespace, batch_size: int) -> str:
    """Where the anchor's records live: ``choice``, or for ``auto`` the GPU when its free memory
    holds the records (:func:`record_bytes`) and the batch's working memory, else the host."""
    if choice != "auto":
        return choice
    if pipe.device.type != "cuda":
        return "host"  # on the CPU both are the same memory
    factor = pipe.vae_scale_factor
    crop_h, crop_w = pipe.vae_preprocess.crop
    records = record_bytes(dict(pipe.unet.config), (args.height // factor, args.width // factor),
                           (crop_h // factor, crop_w // factor), args.steps, batch=2 if args.guidance > 1.0 else 1)
    free, _ = torch.cuda.mem_get_info(pipe.device)
    return "device" if free >= records + batch_size * WORKING_BYTES_PER_FRAME + WORKING_BYTES else "host"


def raise_failed(futures: list[Future]) -> None:
    """Raise the error of the first finished future that failed (a view that could not be written)."""
    for future in futures:
        if future.done():
            future.result()


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.released:
        args.anchor_blend, args.randomness, args.matte_input = "released", "released", False
    check_args(args)
    device = resolve_device(args.device or "auto")
    batch_size = args.batch_size or (CUDA_BATCH_SIZE if device.type == "cuda" else 1)
    pipe = None
    if args.wait_for:  # started beside the stage that writes the frames: the model loads meanwhile
        pipe, load_s = load_model(args, device, batch_size)
        try:
            waited = wait_for_file(args.wait_for, args.wait_timeout, "--wait-for", "--wait-timeout",
                                   writer="prepare_video, through scripts/video_to_4d.py")
        except KeyboardInterrupt:
            raise TrainingStopped(f"interrupted while waiting for {args.wait_for}: nothing was generated",
                                  exit_code=130) from None
        print(f"{args.wait_for} is there (waited {waited:.1f} s): reading the frames", flush=True)
    copied = copy_top_level_frames(args.path)
    if copied:
        print(f"copied {copied} frames into {os.path.join(args.path, 'ref')}")
    frames = list_ref_frames(args.path)
    todo = {i for i, _ in frames if args.overwrite or not has_views(args.path, i)}
    if not todo:
        print(f"all {len(frames)} frames have their six views in {os.path.join(args.path, 'zero123')} "
              "(--overwrite to regenerate)")
        write_record(args, frames_written=0, frames_generated=0)  # a main.py waiting for it goes on
        return 0

    anchored = not args.no_temporal_anchor
    run = frames_to_run(frames, todo, anchored)
    # Worker threads keep the CPU work off the GPU's path: one reads (and mattes) the input frames
    # ahead, from now on (while the model loads, unless it loaded before the wait); one mattes and
    # writes the views of generated frames.
    reader, writer = ThreadPoolExecutor(1, "gen_mv_read"), ThreadPoolExecutor(1, "gen_mv_write")
    writes: list[Future] = []
    try:
        inputs = {i: reader.submit(read_frame, file, args.matting, args.matte_input) for i, file in run}
        if pipe is None:
            pipe, load_s = load_model(args, device, batch_size)
        loaded = time.perf_counter()  # the generation's clock starts here (after any wait)
        anchor = None
        if anchored:
            anchor = TemporalAnchor("record", blend=args.anchor_blend,
                                    storage=anchor_storage(args.anchor_records, pipe, args, batch_size))
        tile = args.width // 2
        # a bar on a terminal; in a log (video_to_4d's gen_mv.log) one line a batch instead
        interactive, done = sys.stderr.isatty(), 0
        with tqdm(total=len(run), desc="zero123++", unit="frame", disable=not interactive) as progress:
            for group in batches(run, batch_size):
                if anchor is not None:
                    anchor.set_mode("record" if group[0][0] == frames[0][0] else "replay")
                images = [composite_on_gray(inputs.pop(i).result()) for i, _ in group]
                try:
                    grids = pipe.generate(images, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                                          width=args.width, height=args.height, anchor=anchor,
                                          randomness=args.randomness)
                except torch.cuda.OutOfMemoryError:
                    raise UserError(
                        f"the GPU ran out of memory denoising {len(group)} frames at once: give a smaller --batch-size "
                        f"(now {batch_size}), or --anchor-records host to keep frame 0's records in CPU memory"
                    ) from None
                writes += [writer.submit(save_views, args.path, i, grid, tile, args.matting)
                           for (i, _), grid in zip(group, grids) if i in todo]
                raise_failed(writes)
                progress.update(len(group))
                done += len(group)
                if not interactive:
                    print(f"zero123++: {done}/{len(run)} frames in {time.perf_counter() - loaded:.1f} s", flush=True)
        for future in writes:
            future.result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)  # what was generated is written, even when a later batch failed
    seconds = time.perf_counter() - loaded
    if anchor is not None:
        where = "on the GPU" if anchor.storage == "device" and device.type == "cuda" else "in CPU memory"
        print(f"temporal anchor: {len(anchor)} records of frame {frames[0][0]}, {anchor.nbytes / 2**30:.2f} GiB {where}")
    print(f"wrote the views of {len(todo)} frames to {os.path.join(args.path, 'zero123')} "
          f"({len(run)} generated in {seconds:.1f} s, {seconds / len(run):.2f} s per frame, batches of {batch_size})")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if peak is not None:
        print(f"peak GPU memory {peak / 2**30:.2f} GiB")
    write_record(args, device=str(device), batch_size=batch_size, frames_written=len(todo), frames_generated=len(run),
                 load_s=load_s, load_parts_s=dict(pipe.load_seconds), generate_s=seconds,
                 s_per_frame=seconds / len(run), peak_gpu_gib=None if peak is None else peak / 2**30,
                 anchor_records=None if anchor is None else dict(count=len(anchor), gib=anchor.nbytes / 2**30,
                                                                storage=anchor.storage))
    return 0


def load_model(args: argparse.Namespace, device: torch.device, batch_size: int):
    """(the Zero123++ pipeline on ``device``, seconds it took, speed options and their warm-up
    included); checks the matting first, so that a missing matting model fails now, not after the
    first frame."""
    try:
        matte(np.zeros((8, 8, 3), dtype=np.uint8), args.matting)
    except ModelUnavailable as err:
        raise ModelUnavailable(f"--matting {args.matting}: {err}; or run gen_mv.py with --matting color (offline)") from err
    begin = time.perf_counter()
    with quiet_hub_warnings():
        pipe = load_pipeline(args.model, device=device)
    seconds = time.perf_counter() - begin
    parts = ", ".join(f"{name} {sec:.1f}" for name, sec in pipe.load_seconds.items())
    print(f"loaded Zero123++ from {args.model} on {device} in {seconds:.1f} s ({parts})", flush=True)
    return pipe, seconds + speed_options(args, pipe, device, batch_size)


def speed_options(args: argparse.Namespace, pipe, device: torch.device, batch_size: int) -> float:
    """--channels-last and --compile (CUDA only; inert elsewhere): the UNet's memory format, then its
    blocks compiled (:func:`compile_unet_blocks`) and compiled now, by one denoising step of a batch
    of grey frames of the run's shapes, instead of in the first batch. That step draws from its own
    seeded generators and leaves torch's global ones as they were. Returns the seconds it took."""
    if device.type != "cuda" or not (args.compile or args.channels_last):
        return 0.0
    begin = time.perf_counter()
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if args.compile:
        compile_unet_blocks(pipe.unet)
        states = torch.get_rng_state(), torch.cuda.get_rng_state_all()
        grey = composite_on_gray(np.zeros((8, 8, 4), dtype=np.uint8))
        pipe.generate([grey] * batch_size, steps=1, guidance_scale=args.guidance, width=args.width,
                      height=args.height, seed=list(range(batch_size)))
        torch.set_rng_state(states[0])
        torch.cuda.set_rng_state_all(states[1])
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # the anchor's storage choice reads the free memory next
    seconds = time.perf_counter() - begin
    chosen = " and ".join(name for name, on in (("channels-last", args.channels_last), ("compiled", args.compile)) if on)
    print(f"UNet {chosen} in {seconds:.1f} s", flush=True)
    return seconds


def write_record(args: argparse.Namespace, **fields) -> None:
    """--json FILE: the run's settings, timings and memory, written atomically once every view is on
    disk (benchmarks read it; main.py's wait_for= waits for it)."""
    if args.json:
        record = dict(model=args.model, steps=args.steps, **fields)
        write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
