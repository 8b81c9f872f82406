"""Export a trained model (animated GLB, .splat or PLY sequences): ``python scripts/export.py --config ... save_path=NAME format=glb``.

The command lives in :mod:`stag4d.export.cli` (also installed as ``stag4d-export``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.export.cli import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
