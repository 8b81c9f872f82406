"""``python main.py`` / ``stag4d-train``: train STAG4D on a video dataset.

    python main.py --config configs/stag4d.yaml path=dataset/NAME save_path=NAME [key=value ...]
    python main.py --config configs/demo.yaml                      # the small CPU demo
    python main.py --config configs/anchored.yaml path=dataset/NAME holdout_views=[1,3]
    python main.py --help-config                                    # every setting

Settings are OmegaConf dotted overrides (:mod:`stag4d.config`). ``gui=web`` serves the browser
viewer around the same trainer, ``gui=dearpygui`` (or ``gui=True``) opens the desktop window.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from stag4d import viewer
from stag4d.config import help_text, load_config
from stag4d.errors import exit_on_user_error
from stag4d.training.trainer import Trainer


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(
        description="Train deformable 3D Gaussians from an RGBA video (STAG4D).",
        epilog="example: python main.py --config configs/stag4d.yaml path=dataset/minions save_path=minions",
    )
    parser.add_argument("--config", default="configs/stag4d.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--help-config", action="store_true", help="list every setting with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. holdout_views=[1,3]")
    args = parser.parse_args(argv)
    if args.help_config:
        print(help_text())
        sys.exit(0)
    return args.config, list(args.overrides)


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    config_path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(config_path, overrides)
    if cfg.viewer.gui != "off":
        viewer.require_front_end(cfg.viewer)  # checked before any data or model is loaded
    trainer = Trainer(cfg)
    if cfg.viewer.gui != "off":
        viewer.run_viewer(viewer.TrainingSession(trainer), cfg.viewer, cfg.camera, cfg.data.ref_size,
                          cfg.output.video_fps)
    else:
        trainer.train()
        print(f"saved {trainer.run_folder}/{trainer.step}")


if __name__ == "__main__":
    main()
