"""Train STAG4D on a video dataset: ``python main.py --config configs/stag4d.yaml path=dataset/NAME``.

The command lives in :mod:`stag4d.training.cli` (also installed as ``stag4d-train``).
"""
from stag4d.training.cli import main

if __name__ == "__main__":
    main()
