"""The pipeline for many clips on Ray, resumable, with a results table: ``python scripts/batch.py CLIPS --out DIR``.

The command lives in :mod:`stag4d.batch.cli` (also installed as ``stag4d-batch``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.batch.cli import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
