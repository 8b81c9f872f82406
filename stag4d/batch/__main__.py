"""``python -m stag4d.batch``: the same command as ``scripts/batch.py``."""
from stag4d.batch.cli import main

if __name__ == "__main__":
    main()
