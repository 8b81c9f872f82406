"""Benchmark: Zero123++ v1.1 time per frame and peak memory, with and without the temporal anchor;
frames generated in batches as gen_mv does; the whole gen_mv command.

    python benchmarks/bench_zero123pp.py                          # full size on CUDA (fp16)
    python benchmarks/bench_zero123pp.py --tiny --device cpu --steps 2 --repeats 1   # smoke test
    python benchmarks/bench_zero123pp.py --frames 17 --batch-sizes 1,4,8,16 [--records device,host]
    python benchmarks/bench_zero123pp.py --gen-mv DATA [--model-dir DIR] [--frames 32] --batch-sizes 1,8
    python benchmarks/bench_zero123pp.py --unet-options ["plain,cuDNN attention,plain again"] [--batch-sizes 8] [--steps 30]
    (smoke tests: add --tiny --device cpu --steps 2, and --frames 5 --batch-sizes 1,3)

The full-size architecture of ``sudo-ai/zero123plus-v1.1`` (``random_model.V11_CONFIGS``: SD2
UNet and VAE, 23-layer OpenCLIP-H text tower, ViT-H/14 vision tower) with random weights (the
time does not depend on the weights), a 720x720 RGBA input, 640x960 output, 75 steps, guidance
4.0. Rows, measured side by side in one process after a warm-up, median of ``--repeats`` runs
(CUDA events):

* ``off``: plain Zero123++ (no anchor);
* ``record``: frame 0 with the anchor recording its self-attention key/value inputs to the CPU;
* ``replay``: a later frame blending frame 0's records into its own;
  each of the two with the records in pinned (page-locked) and in pageable host memory.

Columns: seconds per frame and extra over ``off``; peak GPU memory (max_memory_allocated) and
extra; host memory of the records, measured (``TemporalAnchor.nbytes``) and by the formula
(``record_bytes``). The first pinned record also pays for page-locking the host memory: its time
is shown apart ("first").

``--frames K`` (batches): what gen_mv does for K frames, in one process on the same random model:
frame 0 records (alone), then frames 1..K-1 replay in batches of each ``--batch-sizes`` entry, for
each place of the records (``--records``: ``device``, on the GPU; ``host``, pinned CPU memory).
Each batch is timed (CUDA events) after a warm-up of that batch size; rows give the median seconds
per frame over the batches, the K-1 frames' total, the speed-up over batch 1, peak GPU memory (the
records included when on the device), and how far the frames are from those of the first batch
size (float images in [0, 1]: max |difference|; 8-bit grids: max levels and share of pixels).

``--unet-options``: one batch of frames (the first ``--batch-sizes`` entry, no anchor) generated
with the UNet and VAE in channels-last and/or cuDNN's timed algorithm choice, or with another
attention kernel tried first (``pipeline.attention_kernel``), or with its ResNet blocks and
feed-forward layers compiled (``pipeline.compile_unet_blocks``), side by side with
the plain run (which is timed again at the end, for drift); each the median of ``--repeats`` after
a warm-up (its seconds in the last column: cuDNN's timing, torch.compile), and its max |difference|
from the plain run's float images.

``--gen-mv DATA`` (whole command): ``python -m stag4d.multiview.gen_mv`` as a subprocess per batch
size, on a copy of the first ``--frames`` frames of DATA (its ``ref/``; DATA itself is never
written), with a random model folder loaded from disk like the real one
(``--model-dir``: used if it holds one, else written there first, fp16 on CUDA; a temporary folder
without it). Wall time of the process (imports, CUDA start, model loading, generation, colour
matting and writing the views), and gen_mv's own load / generation times and peak GPU memory.
"""
from __future__ import annotations

import os

# On a shared CPU OpenMP's busy-waiting threads slow every torch op many times over (the CPU smoke
# tests; tests/conftest.py does the same). Must precede torch; the gen_mv subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from stag4d.data.frames import list_ref_frames
from stag4d.multiview import TemporalAnchor, gen_mv, record_bytes
from stag4d.multiview.pipeline import attention_kernel, compile_unet_blocks, composite_on_gray
from stag4d.multiview.random_model import TINY_CONFIGS, V11_CONFIGS, build_pipeline, save_model_folder


def disk_frame(i: int, size: int = 720) -> np.ndarray:
    """uint8 RGB [size, size, 3] on grey: a coloured disk that moves with i."""
    yy, xx = np.mgrid[0:size, 0:size]
    inside = (xx - 0.4 * size - 0.02 * size * i) ** 2 + (yy - size / 2) ** 2 < (0.25 * size) ** 2
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[inside] = (200, 60 + 20 * i, 30, 255)
    return composite_on_gray(rgba)


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[float, int, np.ndarray]:
    """(seconds, peak GPU bytes during the call, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3, torch.cuda.max_memory_allocated(), result
    begin = time.perf_counter()
    result = fn()
    return time.perf_counter() - begin, 0, result


def rss_bytes() -> int:
    """Resident memory of this process (Linux), 0 elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sizes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes >= 1, comma-separated")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random model (smoke test)")
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=None, help="default 640 (32 with --tiny)")
    parser.add_argument("--height", type=int, default=None, help="default 960 (48 with --tiny)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--frames", type=int, default=None,
                        help="batches: frames generated as gen_mv does (frame 0 + K-1 replays); with --gen-mv: "
                             "frames of DATA to copy (default all)")
    parser.add_argument("--batch-sizes", type=sizes, default=[1, 4, 8, 16], help="comma-separated, e.g. 1,8")
    parser.add_argument("--records", default="device", help="batches: where the anchor records live, "
                        "comma-separated: device, host")
    parser.add_argument("--gen-mv", default=None, metavar="DATA", help="time the whole gen_mv command on DATA")
    parser.add_argument("--model-dir", default=None, help="--gen-mv: the random model folder (written if absent)")
    parser.add_argument("--unet-options", nargs="?", const="all", default=None, metavar="ROWS",
                        help="time the UNet / VAE memory format, cuDNN benchmark, attention kernel and compiled-block "
                             "options side by side; ROWS: comma-separated row names to keep (default: every row)")
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = TINY_CONFIGS if args.tiny else V11_CONFIGS
    width = args.width or (32 if args.tiny else 640)
    height = args.height or (48 if args.tiny else 960)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.gen_mv:
        return whole_command(args, configs, device, dtype, width, height)

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_folder:
        pipe = build_pipeline(configs, device, dtype, tokenizer_folder)
    weights = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    print(f"built {'tiny' if args.tiny else 'full-size v1.1'} random model on {device} ({dtype}) "
          f"in {time.perf_counter() - begin:.1f} s; weights {weights / 2**30:.2f} GiB")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")

    if args.unet_options:
        return unet_options(args, pipe, device, width, height)
    if args.frames is not None:
        return batched_generation(args, pipe, device, width, height)
    frame0, frame1 = disk_frame(0), disk_frame(1)

    def generate(rgb: np.ndarray, anchor=None, steps: int = args.steps) -> np.ndarray:
        return pipe(rgb, steps=steps, width=width, height=height, anchor=anchor)

    generate(frame0, steps=min(3, args.steps))  # warm-up: kernels, allocator
    rows: dict[str, dict] = {}

    def add(name: str, runs: list[tuple[float, int, np.ndarray]], **extra) -> np.ndarray:
        times = [t for t, _, _ in runs]
        rows[name] = dict(seconds=times, median_s=statistics.median(times),
                          peak_gpu_bytes=max(p for _, p, _ in runs), **extra)
        return runs[-1][2]

    off_runs = [timed(lambda: generate(frame1), device) for _ in range(args.repeats)]
    off = add("off", off_runs)
    deterministic = all(np.array_equal(r[2], off) for r in off_runs)

    replayed = {}
    for pinned in (True, False):
        label = "pinned" if pinned else "pageable"
        anchor = TemporalAnchor("record", pin_memory=pinned)
        record_runs, rss_growth = [], []
        for _ in range(args.repeats):
            anchor.clear()
            anchor.set_mode("record")
            rss = rss_bytes()
            record_runs.append(timed(lambda: generate(frame0, anchor), device))
            rss_growth.append(rss_bytes() - rss)
        add(f"record ({label})", record_runs, first_s=record_runs[0][0], record_bytes=anchor.nbytes,
            records=len(anchor), rss_growth_bytes=rss_growth)
        anchor.set_mode("replay")
        replay_runs = [timed(lambda: generate(frame1, anchor), device) for _ in range(args.repeats)]
        replayed[label] = add(f"replay ({label})", replay_runs)
        if pinned:
            reserved = anchor.reserved_bytes
        anchor.clear()

    factor = pipe.vae_scale_factor
    cond = pipe.vae_preprocess.crop
    formula = record_bytes(dict(pipe.unet.config), (height // factor, width // factor),
                           (cond[0] // factor, cond[1] // factor), args.steps, batch=2, bytes_per_value=2)

    base_t, base_m = rows["off"]["median_s"], rows["off"]["peak_gpu_bytes"]
    print(f"\nZero123++ v1.1 ({'tiny' if args.tiny else 'full size'}), {width}x{height}, {args.steps} steps, "
          f"guidance 4.0, median of {args.repeats} after warm-up")
    print(f"{'run':<27}{'s/frame':>9}{'extra s':>9}{'first s':>9}{'peak GPU GiB':>14}{'extra GiB':>11}"
          f"{'records GiB':>13}")
    for name, row in rows.items():
        first = f"{row['first_s']:.2f}" if "first_s" in row else "-"
        records = f"{row['record_bytes'] / 2**30:.3f}" if "record_bytes" in row else "-"
        print(f"{name:<27}{row['median_s']:>9.2f}{row['median_s'] - base_t:>+9.2f}{first:>9}"
              f"{row['peak_gpu_bytes'] / 2**30:>14.2f}{(row['peak_gpu_bytes'] - base_m) / 2**30:>+11.2f}{records:>13}")
    measured = rows["record (pinned)"]["record_bytes"]
    print(f"\nrecords of frame 0: {rows['record (pinned)']['records']} self-attention calls, measured {measured} bytes "
          f"({measured / 2**30:.3f} GiB), formula {formula} bytes ({'equal' if formula == measured else 'DIFFERENT'})")
    print(f"pinned host memory reserved for them: {reserved} bytes ({reserved / 2**30:.3f} GiB)")
    print(f"host RSS growth while recording (pageable): "
          f"{[round(g / 2**30, 2) for g in rows['record (pageable)']['rss_growth_bytes']]} GiB")
    print(f"same seed, repeated frames bit-identical: {deterministic}; "
          f"replays identical (pinned, pageable): "
          f"{all(np.array_equal(replayed['pinned'], r) for r in replayed.values())}")

    if args.json:
        summary = dict(device=str(device), tiny=args.tiny, width=width, height=height, steps=args.steps,
                       repeats=args.repeats, weights_bytes=weights, formula_record_bytes=formula,
                       pinned_reserved_bytes=reserved,
                       deterministic=deterministic, rows=rows)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


# --------------------------------------------------------------------------------------------
# frames in batches, in this process
# --------------------------------------------------------------------------------------------


# (row, channels-last, cuDNN benchmark, attention kernel tried first: pipeline.ATTENTION_KERNELS,
#  ResNet blocks and feed-forward layers compiled: pipeline.compile_unet_blocks)
UNET_OPTIONS = [("plain", False, False, "auto", False), ("cuDNN benchmark", False, True, "auto", False),
                ("channels-last", True, False, "auto", False),
                ("channels-last + cuDNN benchmark", True, True, "auto", False),
                ("cuDNN attention", False, False, "cudnn", False), ("flash attention", False, False, "flash", False),
                ("memory-efficient attention", False, False, "efficient", False),
                ("compiled blocks", False, False, "auto", True),
                ("compiled blocks + channels-last + cuDNN benchmark", True, True, "auto", True),
                ("plain again", False, False, "auto", False)]


def unet_options(args, pipe, device: torch.device, width: int, height: int) -> int:
    """Seconds of one batch under each of :data:`UNET_OPTIONS`, and how far its images are from the plain run's."""
    frames = [disk_frame(i) for i in range(args.batch_sizes[0])]
    print(f"{len(frames)} frames per batch, {args.steps} steps, {width}x{height}, median of {args.repeats} after a warm-up")
    print("| setting | seconds | s/frame | runs | max abs difference from plain | peak GiB | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    plain = None
    wanted = None if args.unet_options == "all" else {n.strip() for n in args.unet_options.split(",")}
    unknown = (wanted or set()) - {row[0] for row in UNET_OPTIONS}
    if unknown:
        raise SystemExit(f"--unet-options: no row {', '.join(sorted(unknown))}; rows: "
                         + ", ".join(row[0] for row in UNET_OPTIONS))
    for name, channels_last, benchmark, kernel, compiled in UNET_OPTIONS:
        if wanted is not None and name not in wanted:
            continue
        torch.backends.cudnn.benchmark = benchmark
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        pipe.unet.to(memory_format=memory_format)
        pipe.vae.to(memory_format=memory_format)
        compile_unet_blocks(pipe.unet, compile=compiled)

        def run(steps: int = args.steps, kernel: str = kernel):
            with attention_kernel(kernel):
                return pipe.generate(frames, steps=steps, width=width, height=height, output="float")

        # warm-up: cuDNN benchmark times its algorithms here, torch.compile compiles (or loads its cache)
        warm_up_s = timed(lambda: run(min(2, args.steps)), device)[0]
        runs = [timed(run, device) for _ in range(args.repeats)]
        images = runs[-1][2]
        plain = images if plain is None else plain
        difference = max(float(np.abs(a - b).max()) for a, b in zip(images, plain))
        seconds = statistics.median(t for t, _, _ in runs)
        print(f"| {name} | {seconds:.2f} | {seconds / len(frames):.3f} | {', '.join(f'{t:.2f}' for t, _, _ in runs)} "
              f"| {difference:.2e} | {max(p for _, p, _ in runs) / 2**30:.2f} | {warm_up_s:.1f} |", flush=True)
    compile_unet_blocks(pipe.unet, compile=False)
    torch.backends.cudnn.benchmark = False
    return 0


def batched_generation(args, pipe, device: torch.device, width: int, height: int) -> int:
    if args.frames < 2:
        raise SystemExit("--frames: give at least 2 (frame 0 and a frame that replays it)")
    storages = [s.strip() for s in args.records.split(",") if s.strip()]
    if not storages or any(s not in ("device", "host") for s in storages):
        raise SystemExit(f"--records {args.records}: give device, host or both, comma-separated")
    images = [disk_frame(i) for i in range(args.frames)]
    later = images[1:]
    kwargs = dict(steps=args.steps, width=width, height=height, output="float")

    for size in args.batch_sizes:  # warm-up of each batch shape: kernels, cuBLAS / cuDNN choices, allocator
        pipe.generate(later[:size], **{**kwargs, "steps": min(2, args.steps)})

    rows, records, reference = [], {}, None
    for storage in storages:
        anchor = TemporalAnchor("record", storage=storage)
        seconds, _, _ = timed(lambda a=anchor: pipe.generate(images[:1], anchor=a, **kwargs), device)
        records[storage] = dict(record_s=seconds, record_bytes=anchor.nbytes)
        anchor.set_mode("replay")
        for size in args.batch_sizes:
            per_frame, total, grids, peak = [], 0.0, [], 0
            for start in range(0, len(later), size):
                batch = later[start:start + size]
                t, batch_peak, out = timed(lambda a=anchor, b=batch: pipe.generate(b, anchor=a, **kwargs), device)
                per_frame.append(t / len(batch))
                total += t
                grids += out
                peak = max(peak, batch_peak)
            if reference is None:
                reference = (storage, size, grids)
            float_diff = max(float(np.abs(a - b).max()) for a, b in zip(grids, reference[2]))
            levels = [np.abs(to_uint8(a).astype(int) - to_uint8(b)) for a, b in zip(grids, reference[2])]
            rows.append(dict(records=storage, batch_size=size, batches=len(per_frame), per_frame_s=per_frame,
                             median_s=statistics.median(per_frame), replays_s=total,
                             peak_gpu_bytes=peak,
                             max_float_diff=float_diff, max_levels=int(max(d.max() for d in levels)),
                             pixels_differing=float(np.mean([np.mean(d > 0) for d in levels]))))
            print(f"records on the {storage}, batch {size}: {rows[-1]['median_s']:.3f} s/frame", flush=True)
        anchor.clear()  # frees the records before the next place is measured

    base = {r["records"]: r["median_s"] for r in rows if r["batch_size"] == args.batch_sizes[0]}
    print(f"\n{args.frames} frames as gen_mv makes them ({'tiny' if args.tiny else 'full-size'} random Zero123++ "
          f"v1.1, {width}x{height}, {args.steps} steps, guidance 4.0, {pipe.dtype}, {device}): frame 0 records alone, "
          f"frames 1..{args.frames - 1} replay in batches; each batch timed after a warm-up of its size; "
          f"differences against batch {reference[1]} with records on the {reference[0]}\n")
    print("| records | batch | batches | s/frame (median) | frames 1..K-1 s | speed-up | peak GPU GiB "
          "| max abs diff (float) | max 8-bit levels | pixels differing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['records']} | {r['batch_size']} | {r['batches']} | {r['median_s']:.3f} | {r['replays_s']:.2f} "
              f"| {base[r['records']] / r['median_s']:.2f}x | {r['peak_gpu_bytes'] / 2**30:.2f} "
              f"| {r['max_float_diff']:.1e} | {r['max_levels']} | {100 * r['pixels_differing']:.3f}% |")
    for storage, rec in records.items():
        best = min((r for r in rows if r["records"] == storage), key=lambda r: r["median_s"])
        print(f"\nrecords on the {storage}: frame 0 (record) {rec['record_s']:.2f} s, "
              f"{rec['record_bytes'] / 2**30:.2f} GiB of records; all {args.frames} frames with batch "
              f"{best['batch_size']}: {rec['record_s'] + best['replays_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), tiny=args.tiny, width=width, height=height, steps=args.steps,
                           frames=args.frames, records=records, rows=rows), f, indent=2)
    return 0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The 8-bit grid gen_mv writes of a float image in [0, 1] (as ``Zero123PlusPipeline.decode``)."""
    return np.round(image * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# the whole gen_mv command
# --------------------------------------------------------------------------------------------


def copy_frames(data: str, target: str, count: int | None) -> int:
    """Copy the first ``count`` frames of ``data/ref`` into ``target/ref``; returns how many."""
    if not os.path.isdir(os.path.join(data, "ref")):
        raise SystemExit(f"--gen-mv {data}: give a dataset folder with ref/<i>_rgba.png frames")
    frames = list_ref_frames(data)[:count] if count else list_ref_frames(data)
    os.makedirs(os.path.join(target, "ref"), exist_ok=True)
    for i, file in frames:
        shutil.copyfile(file, os.path.join(target, "ref", f"{i}_rgba.png"))
    return len(frames)


def whole_command(args, configs: dict, device: torch.device, dtype: torch.dtype, width: int, height: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model_dir or os.path.join(scratch, "model")
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            begin = time.perf_counter()
            save_model_folder(model, configs, dtype=dtype, device=device)
            print(f"wrote a random {'tiny' if args.tiny else 'full-size'} Zero123++ ({dtype}) to {model} "
                  f"in {time.perf_counter() - begin:.1f} s")
        rows, reference = [], None
        for size in args.batch_sizes:
            dataset = os.path.join(scratch, f"batch{size}")
            count = copy_frames(args.gen_mv, dataset, args.frames)
            report = os.path.join(scratch, f"gen_mv_batch{size}.json")
            command = [sys.executable, "-m", "stag4d.multiview.gen_mv", "--path", dataset, "--model", model,
                       "--device", str(device), "--steps", str(args.steps), "--matting", "color",
                       "--width", str(width), "--height", str(height), "--batch-size", str(size), "--json", report]
            begin = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
            wall = time.perf_counter() - begin
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                raise SystemExit(f"gen_mv exited with {done.returncode}: {' '.join(command)}")
            with open(report) as f:
                timings = json.load(f)
            views = {(i, k): read_rgba(f) for i in range(count) for k, f in
                     enumerate(gen_mv.view_files(dataset, i))}
            if reference is None:
                reference = (size, views)
            rgb = [np.abs(v[..., :3].astype(int) - reference[1][key][..., :3]) for key, v in views.items()]
            rows.append(dict(batch_size=size, frames=count, wall_s=wall, load_s=timings["load_s"],
                             generate_s=timings["generate_s"], peak_gib=timings["peak_gpu_gib"] or 0.0,
                             max_levels=int(max(d.max() for d in rgb)),
                             pixels_differing=float(np.mean([np.mean(d > 0) for d in rgb]))))
            print(f"gen_mv --batch-size {size}: {wall:.1f} s wall", flush=True)
            shutil.rmtree(dataset)
    print(f"\nthe whole gen_mv command on {rows[0]['frames']} frames of {args.gen_mv} ({'tiny' if args.tiny else 'full-size'} "
          f"random Zero123++ v1.1 from disk, {width}x{height}, {args.steps} steps, --matting color, {device}); "
          f"differences of the written views' RGB against batch {reference[0]}\n")
    print("| batch | process wall s | model load s | generation + writing s | s/frame | peak GPU GiB "
          "| max 8-bit levels | pixels differing |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['wall_s']:.1f} | {r['load_s']:.1f} | {r['generate_s']:.1f} "
              f"| {r['generate_s'] / r['frames']:.2f} | {r['peak_gib']:.2f} | {r['max_levels']} "
              f"| {100 * r['pixels_differing']:.3f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), tiny=args.tiny, data=args.gen_mv, steps=args.steps, rows=rows), f,
                      indent=2)
    return 0


def read_rgba(file: str) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as image:
        return np.asarray(image.convert("RGBA"))


if __name__ == "__main__":
    sys.exit(main())
