"""A video (or a folder of images) to a dataset folder: ``python scripts/prepare_video.py clip.mp4 --name NAME``.

The command lives in :mod:`stag4d.data.prepare_video` (also installed as ``stag4d-prepare-video``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.data.prepare_video import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
