"""Video to 4D object in one command: ``python scripts/video_to_4d.py INPUT --name NAME [key=value ...]``.

prepare_video, gen_mv and main.py side by side, each loading its model while the stage before it works. The command
lives in :mod:`stag4d.video_to_4d`. Run from a checkout after ``pip install -r requirements.txt``, which installs this
project (``-e .``).
"""
try:
    from stag4d.video_to_4d import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
