"""Render a trained STAG4D model to ``valid/``: ``python visualize.py --config configs/stag4d.yaml
path=dataset/NAME save_path=NAME``.

The command lives in :mod:`stag4d.evaluation.visualize` (also installed as ``stag4d-visualize``).
"""
from stag4d.evaluation.visualize import main

if __name__ == "__main__":
    main()
