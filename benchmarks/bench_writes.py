"""How long the training loop is held up by a save and by a validation, written in line
(``background_writes=false``) or on the writer thread (the default), and what a save being
written costs the training steps that run beside it.

The trainer is ``configs/anchored.yaml`` by default (no diffusion model: saves and validations do
not touch it; ``--config configs/stag4d.yaml lambda_zero123=0`` needs only ref/) on a real
dataset, with ``num_pts`` Gaussians (the default run ends near 24k) and the run's 32 frames, so a
save writes model.ply, deformation.pt, 32 frame PLYs and the checkpoint, and a validation
renders and writes 2 x 32 JPEGs and 2 videos at ``ref_size``.

    python benchmarks/bench_writes.py --path ../shared/data/minions --num-pts 24000 --repeats 5

Columns (seconds, median / p10 / p90 of ``--repeats``):
  in line      ``save()`` / ``validate()`` with waiting: the old cost to the loop
  background   the same call without waiting: what the loop still pays (snapshot, renders)
  steps alone / steps beside a save: ``--steps`` training steps without and with a save being
  written on the writer thread (the GIL and the cores are shared).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import percentile  # noqa: E402

from stag4d.config import load_config  # noqa: E402
from stag4d.training.trainer import Trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def row(name: str, values: list[float]) -> str:
    return (f"| {name} | {statistics.median(values):.3f} | {percentile(values, 0.1):.3f} | "
            f"{percentile(values, 0.9):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=os.path.join(REPO, "..", "shared", "data", "minions"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-pts", type=int, default=24000)
    parser.add_argument("--ref-size", type=int, default=512, help="validation render size (the default run's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed beside a save (0 = skip)")
    parser.add_argument("--outdir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "anchored.yaml"),
                        help="run config (default: anchored.yaml; stag4d.yaml with lambda_zero123=0 needs no anchors)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")
    args = parser.parse_args()

    outdir = args.outdir or tempfile.mkdtemp(prefix="bench_writes_")
    cfg = load_config(args.config, [
        f"path={args.path}", "save_path=bench_writes", f"device={args.device}", f"outdir={outdir}",
        f"valid_dir={outdir}/valid", f"num_pts={args.num_pts}", f"ref_size={args.ref_size}", "keep_last=0",
        "density_start_iter=100000", *args.overrides])
    trainer = Trainer(cfg)
    device = trainer.device
    for _ in range(3):  # warm-up: the first step builds everything
        trainer.train_step()
    print(f"device {device}, {trainer.model.num} Gaussians, {trainer.num_frames} frames, "
          f"validation {args.ref_size} px, writes to {outdir}", file=sys.stderr)

    results: dict[str, list[float]] = {}
    for kind, call in (("save", trainer.save), ("validate", trainer.validate)):
        call(trainer.step, wait=True)  # warm-up (first JPEG/ffmpeg/PLY code paths)
        for _ in range(args.repeats):
            results.setdefault(f"{kind}, in line", []).append(timed(lambda: call(trainer.step, wait=True), device))
            results.setdefault(f"{kind}, background", []).append(
                timed(lambda: call(trainer.step, wait=False), device))
            trainer.writer.wait()

    if args.steps:
        for _ in range(args.repeats):
            results.setdefault(f"{args.steps} steps alone", []).append(
                timed(lambda: [trainer.train_step() for _ in range(args.steps)], device))
            trainer.save(wait=False)
            results.setdefault(f"{args.steps} steps beside a save", []).append(
                timed(lambda: [trainer.train_step() for _ in range(args.steps)], device))
            trainer.writer.wait()
    trainer.close()

    print("| call | median s | p10 | p90 |\n|---|---|---|---|")
    for name, values in results.items():
        print(row(name, values))


if __name__ == "__main__":
    main()
