"""Make the procedural demo dataset (``dataset/demo``): ``python scripts/make_demo.py``.

The command lives in :mod:`stag4d.data.make_demo` (also installed as ``stag4d-make-demo``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.data.make_demo import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
