"""Six Zero123++ views per frame, with frame 0 as the temporal anchor: ``python scripts/gen_mv.py --path dataset/NAME``.

The command lives in :mod:`stag4d.multiview.gen_mv` (also installed as ``stag4d-gen-mv``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.multiview.gen_mv import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
