"""A picture of motion between frames: the reference view of trained runs at chosen times, under
the input frames at the same times (issue 22's comparison by eye).

    python benchmarks/time_sheet.py --config configs/demo.yaml --path DATA [--outdir LOGS] \
        --runs OLD NEW (names under --outdir, or run folders) [--labels "preset" "new"] --times 2 2.5 3 3.5 4 --out sheet.png [--size 96 --zoom 2]

Columns are times in frame units (3.5 = half way from frame 3 to frame 4, t = 3.5 / T); rows are
the input frame (blank between frames) and then each run's render at that time, from its latest
saved step (``outdir/<run>``). Frames named in the run's ``holdout_frames`` are marked with '*'
(never trained on). A render between two frames should be an in-between pose, not a jump.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from stag4d.config import load_config
from stag4d.data.frames import load_frames
from stag4d.evaluation.saved_model import open_saved_model
from stag4d.files import atomic_path
from stag4d.rasterizer.render import render

LABEL_WIDTH = 70


def to_image(rgb: torch.Tensor, size: int) -> Image.Image:
    """The central ``size`` x ``size`` pixels of [3, S, S] in [0, 1], as PIL RGB."""
    border = (rgb.shape[-1] - size) // 2
    rgb = rgb[:, border:border + size, border:border + size]
    return Image.fromarray((rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--path", required=True, help="the dataset the runs were trained on")
    parser.add_argument("--outdir", default=".", help="the runs' outdir")
    parser.add_argument("--runs", nargs="+", required=True, help="save_path names under outdir, or run folders")
    parser.add_argument("--labels", nargs="+", help="row labels (default: the run names)")
    parser.add_argument("--times", nargs="+", type=float, required=True, help="times in frame units")
    parser.add_argument("--size", type=int, default=96, help="tile size in pixels")
    parser.add_argument("--zoom", type=float, default=1.0, help="render this much larger and keep the centre")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        sys.exit(f"error: {len(labels)} labels for {len(args.runs)} runs: give one per run")

    full = round(args.size * args.zoom)  # rendered size; the centre args.size pixels are kept
    rows: list[tuple[str, list[Image.Image]]] = []
    held_out: set[int] = set()
    data = None
    for run, label in zip(args.runs, labels):
        outdir, name = (os.path.split(os.path.normpath(run)) if os.sep in run else (args.outdir, run))
        cfg = load_config(args.config, [f"path={args.path}", f"outdir={outdir}", f"save_path={name}", "device=cpu"])
        saved = open_saved_model(cfg, None, torch.device("cpu"))
        if saved.trained is not None:
            held_out |= set(saved.trained.data.holdout_frames or [])
        if data is None:
            data = load_frames(args.path, ref_size=full, anchor_size=full, require_anchors=False)
        camera = cfg.camera.reference(full)
        white = torch.ones(3)
        tiles = []
        with torch.no_grad():
            for frame_time in args.times:
                gaussians = saved.model.gaussians_at_times([frame_time / saved.num_frames])[0]
                tiles.append(to_image(render(gaussians, camera.with_time(frame_time / saved.num_frames), white,
                                             backend="torch").image, args.size))
        rows.append((label, tiles))
    blank = Image.new("RGB", (args.size, args.size), (235, 235, 235))
    inputs = [to_image(data.ref_rgb[int(t)], args.size) if float(t).is_integer() and int(t) < data.ref_rgb.shape[0] else blank
              for t in args.times]
    rows.insert(0, ("input", inputs))

    header = 16
    sheet = Image.new("RGB", (LABEL_WIDTH + args.size * len(args.times), header + args.size * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, t in enumerate(args.times):
        mark = "*" if float(t).is_integer() and int(t) in held_out else ""
        draw.text((LABEL_WIDTH + c * args.size + 4, 2), f"{t:g}{mark}", fill="black")
    for r, (label, tiles) in enumerate(rows):
        draw.text((4, header + r * args.size + args.size // 2 - 6), label[:11], fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (LABEL_WIDTH + c * args.size, header + r * args.size))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_path(args.out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out} ({len(rows)} rows x {len(args.times)} times; * = held out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
