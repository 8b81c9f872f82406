"""Training speed with the web viewer open (gui=web, one browser connected) against headless.

    # the faithful step (as bench_train_step.py: random-weight zero123-xl, fine stage, 512 px renders)
    python benchmarks/bench_web_viewer.py --path ../shared/data/minions
    python benchmarks/bench_web_viewer.py --path ../shared/data/minions --client socket
    # smoke test on a CPU (tiny guidance, tiny model)
    python benchmarks/bench_web_viewer.py --path dataset/demo --device cpu --tiny --config configs/demo.yaml \\
        --block-steps 5 --blocks 2 --start-step 100 num_pts=500

One trainer (built as ``bench_train_step.py`` builds it) trains in blocks of ``--block-steps``
steps, alternating (ABBA...) between
* headless: ``trainer.train_step()`` in a loop, as ``main.py`` without a viewer, and
* viewer: the web viewer's own loop (``WebViewer.tick``: k = ``viewer_steps_per_frame`` steps per
  turn, the scene sent every ``viewer_update_steps`` steps, the status a few times a second)
  with one browser connected: ``--client chromium`` a headless Chromium (Playwright; it draws the
  splats in software on this machine's CPU, which a browser on your own computer would not) or
  ``--client socket`` a websocket client that receives everything the server sends and draws
  nothing (:class:`stag4d.viewer.webclient.HeadlessClient`). No display is needed.
The device is synchronized at the start and end of each block; a block's wall time / steps is
its ms per step. Printed: per condition the median over its blocks and the ratio.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from bench_train_step import build_guidance, build_trainer

from stag4d.viewer import TrainingSession
from stag4d.viewer.web import WebViewer
from stag4d.viewer.webclient import CHROMIUM_ARGS, HeadlessClient, find_chromium


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def headless_block(trainer, steps: int, cuda: bool) -> float:
    """ms per step of ``steps`` plain training steps."""
    sync(cuda)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(cuda)
    return 1000.0 * (time.perf_counter() - start) / steps


def viewer_block(viewer: WebViewer, steps: int, cuda: bool) -> float:
    """ms per step of ``steps`` steps trained by the viewer's loop (training started, then paused)."""
    trainer = viewer.session.trainer
    sync(cuda)
    start_step, start = trainer.step, time.perf_counter()
    viewer.session.start()
    while trainer.step < start_step + steps:
        viewer.tick()
    viewer.session.stop()
    sync(cuda)
    return 1000.0 * (time.perf_counter() - start) / (trainer.step - start_step)


class ChromiumClient:
    """A headless Chromium showing the viewer's page (Playwright, synchronous API)."""

    def __init__(self, url: str, executable: str):
        from playwright.sync_api import sync_playwright

        self._manager = sync_playwright().start()
        self._browser = self._manager.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1280, "height": 720})
        self.page.goto(url)
        self.page.wait_for_selector("canvas")

    def close(self) -> None:
        self._browser.close()
        self._manager.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="../shared/data/minions")
    parser.add_argument("--config", default="configs/stag4d.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny guidance (smoke test on a CPU)")
    parser.add_argument("--outdir", default="/tmp/bench_web_viewer")
    parser.add_argument("--client", choices=("chromium", "socket"), default=None,
                        help="the connected browser (default: chromium when found, else socket)")
    parser.add_argument("--warmup", type=int, default=20, help="steps before timing (JIT, CUDA graphs)")
    parser.add_argument("--start-step", type=int, default=7000,
                        help="step counter before timing: fine stage, ratio 1 (512 renders), past densification")
    parser.add_argument("--block-steps", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=3, help="blocks per condition")
    parser.add_argument("overrides", nargs="*", help="config overrides (viewer ones too: viewer_update_steps=20)")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    executable = find_chromium()
    client_kind = args.client or ("chromium" if executable else "socket")
    if client_kind == "chromium" and executable is None:
        parser.error("--client chromium: no Chromium found (apt-get install chromium, or set STAG4D_CHROMIUM)")

    trainer = build_trainer(args, build_guidance(args), list(args.overrides))
    trainer.step = args.start_step
    for _ in range(args.warmup):
        trainer.train_step()
    sync(cuda)
    cfg = trainer.cfg
    settings = dataclasses.replace(cfg.viewer, gui="web", viewer_port=0)
    viewer = WebViewer(TrainingSession(trainer), settings, cfg.camera, cfg.data.ref_size, cfg.output.video_fps)
    viewer.start()
    client = ChromiumClient(viewer.url, executable) if client_kind == "chromium" else HeadlessClient(viewer.port)
    try:
        deadline = time.monotonic() + 120
        while not viewer.published:  # the browser is connected and has the scene
            viewer.tick(wait=0.05)
            if time.monotonic() > deadline:
                raise SystemExit("the browser did not connect within 120 s")
        times: dict[str, list[float]] = {"headless": [], "viewer": []}
        for block in range(args.blocks):
            order = ("headless", "viewer") if block % 2 == 0 else ("viewer", "headless")
            for condition in order:
                updates = len(viewer.published)
                if condition == "headless":
                    ms = headless_block(trainer, args.block_steps, cuda)
                else:
                    ms = viewer_block(viewer, args.block_steps, cuda)
                times[condition].append(ms)
                print(f"[block {block} {condition}] {ms:.2f} ms/step, step {trainer.step}, "
                      f"{len(viewer.published) - updates} scene updates sent", flush=True)
        sent = f", {client.received_bytes / 2**20:.1f} MiB received" if client_kind == "socket" else ""
    finally:
        client.close()
        viewer.close()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {device}; client: {client_kind}{sent}; {trainer.model.num} Gaussians; "
          f"viewer_update_steps={settings.viewer_update_steps}, viewer_steps_per_frame={settings.viewer_steps_per_frame}; "
          f"{args.blocks} blocks x {args.block_steps} steps per condition from step {args.start_step + args.warmup}")
    print("| condition | ms/step median | min | max |")
    print("|---|---|---|---|")
    for condition, values in times.items():
        print(f"| {condition} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    ratio = statistics.median(times["viewer"]) / statistics.median(times["headless"])
    print(f"viewer / headless: {ratio:.3f} ({100.0 * (ratio - 1.0):+.1f}%)")


if __name__ == "__main__":
    main()
