"""What a model that is smooth in time can score on the held-out frames of a procedural demo (issue 22).

    python benchmarks/time_ceiling.py                                   # the fast variant, frames 3, 8, 13 held out
    python benchmarks/time_ceiling.py --cycles 1 --amplitude 1.6 --wobble 0.8
    python benchmarks/time_ceiling.py --data .data/minions --holdout 4 12 20 28 --size 512   # images only

The demo's true Gaussians are known at every time, so the held-out frame h can be predicted from
its trained neighbours h - 1 and h + 1 the ways a smooth model could, and scored (PSNR, reference
view, on white, at ``--size``) against the true frame:

* ``linear motion``: every Gaussian half way between its positions at h - 1 and h + 1 (what a
  deformation that is linear in time between the trained frames renders);
* ``image blend``: the mean of the two neighbouring images (the best a cross-fade can do);
* ``copy``: the previous frame's image (no motion at all).

When these are far below the trained frames' score, the held-out frames are not determined by the
trained ones (the motion changes direction faster than the frames sample it) and no smoothness
prior closes the gap: a held-out gap there measures the clip, not the model. With ``--data`` (any
dataset folder) only the two image predictions are scored, from its ``ref/`` frames composited on
white (the motion of a real clip is unknown).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from stag4d.data.frames import load_frames
from stag4d.data.make_demo import (
    SPACING,
    Motion,
    creature_gaussians,
    make_creature,
    reference_camera,
    to_gaussian_params,
)
from stag4d.evaluation import metrics
from stag4d.rasterizer import render


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """The project's PSNR (:func:`stag4d.evaluation.metrics.psnr`) of two [3, H, W] images."""
    return float(metrics.psnr(torch.as_tensor(a), torch.as_tensor(b)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=float, default=2.5)
    parser.add_argument("--amplitude", type=float, default=1.6)
    parser.add_argument("--wobble", type=float, default=0.8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--holdout", type=int, nargs="+", default=[3, 8, 13])
    parser.add_argument("--size", type=int, default=128, help="the size the runs are scored at (demo.yaml: 128)")
    parser.add_argument("--data", help="a dataset folder: score the image predictions of its ref/ frames instead")
    args = parser.parse_args(argv)
    if args.data:
        frames = load_frames(args.data, ref_size=args.size, require_anchors=False, device="cpu")
        args.frames = frames.num_frames
        images = [frames.ref_rgb[i].numpy() for i in range(args.frames)]
    if any(not 0 < h < args.frames - 1 for h in args.holdout):
        parser.error(f"--holdout {args.holdout}: each frame needs a neighbour on both sides (1..{args.frames - 2})")
    if args.data:
        print(f"{args.data}: {args.frames} frames, {args.size} px; PSNR of the held-out frame (dB)")
        print(f"{'frame':>6} {'image blend':>12} {'copy':>7}")
        rows = [(h, psnr(0.5 * (images[h - 1] + images[h + 1]), images[h]), psnr(images[h - 1], images[h]))
                for h in args.holdout]
        for h, blend, copy in rows + [("mean", *np.mean([r[1:] for r in rows], axis=0))]:
            print(f"{h:>6} {blend:>12.2f} {copy:>7.2f}")
        return

    motion = Motion(args.cycles, args.amplitude, args.wobble)
    creature = make_creature(0, SPACING)
    gaussians = [creature_gaussians(creature, i / args.frames, motion) for i in range(args.frames)]
    camera = reference_camera(size=args.size, time=0.0)

    def image(g) -> np.ndarray:
        with torch.no_grad():
            return render(to_gaussian_params(g), camera, torch.ones(3), backend="torch").image.clamp(0, 1).numpy()

    rows = []
    for h in args.holdout:
        truth, before, after = image(gaussians[h]), image(gaussians[h - 1]), image(gaussians[h + 1])
        moved = dict(gaussians[h], means=0.5 * (gaussians[h - 1]["means"] + gaussians[h + 1]["means"]))
        rows.append((h, psnr(image(moved), truth), psnr(0.5 * (before + after), truth), psnr(before, truth)))
    print(f"motion {args.cycles} cycles, amplitude {args.amplitude}, wobble {args.wobble}; {args.frames} frames, "
          f"{args.size} px; PSNR of the held-out frame (dB)")
    print(f"{'frame':>6} {'linear motion':>14} {'image blend':>12} {'copy':>7}")
    for h, *values in rows:
        print(f"{h:>6} " + " ".join(f"{v:>{w}.2f}" for v, w in zip(values, (14, 12, 7))))
    means = np.mean([r[1:] for r in rows], axis=0)
    print(f"{'mean':>6} " + " ".join(f"{v:>{w}.2f}" for v, w in zip(means, (14, 12, 7))))


if __name__ == "__main__":
    main()
