"""Score a trained model against its dataset (or render it at given views): ``python scripts/evaluate.py --config ... save_path=NAME``.

The command lives in :mod:`stag4d.evaluation.evaluate` (also installed as ``stag4d-evaluate``). Run from a checkout after
``pip install -r requirements.txt``, which installs this project (``-e .``).
"""
try:
    from stag4d.evaluation.evaluate import main
except ModuleNotFoundError as err:  # the project is not installed: say how, in one line
    raise SystemExit(f"error: {err}; install the project first: pip install -r requirements.txt") from None

if __name__ == "__main__":
    main()
