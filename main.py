"""Train STAG4D on a video dataset.

    python main.py --config configs/stag4d.yaml path=dataset/NAME save_path=NAME [key=value ...]
    python main.py --config configs/demo.yaml                      # the small CPU demo
    python main.py --config configs/anchored.yaml path=dataset/NAME holdout_views=[1,3]

Settings are OmegaConf dotted overrides (see configs/stag4d.yaml for every key). ``gui=True``
opens the interactive viewer (viewer.py) around the same trainer.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from errors import UserError, exit_on_user_error


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(
        description="Train deformable 3D Gaussians from an RGBA video (STAG4D).",
        epilog="example: python main.py --config configs/stag4d.yaml path=dataset/minions save_path=minions",
    )
    parser.add_argument("--config", default="configs/stag4d.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. holdout_views=[1,3]")
    args = parser.parse_args(argv)
    return args.config, list(args.overrides)


def import_viewer():
    """The viewer module (lazy: it imports dearpygui); a one-line UserError when it cannot load."""
    try:
        import viewer
    except ImportError as err:
        if getattr(err, "name", None) == "viewer":
            raise UserError("gui=True needs viewer.py, which is not in this checkout; run with gui=False") from err
        raise UserError(f"gui=True: the viewer cannot start ({err}); install dearpygui or run with gui=False") from err
    viewer.require_gui()  # dearpygui and a display, checked before any data or model is loaded
    return viewer


@exit_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> None:
    from config_utils import load_config

    config_path, overrides = parse_args(argv)
    cfg = load_config(config_path, overrides)
    viewer = import_viewer() if cfg.gui else None  # fail before loading data and models

    from trainer import Trainer

    trainer = Trainer(cfg)
    if viewer is not None:
        viewer.run_viewer(trainer, cfg)
    else:
        trainer.train()
        print(f"saved {trainer.run_folder}/{trainer.step}")


if __name__ == "__main__":
    main(sys.argv[1:])
