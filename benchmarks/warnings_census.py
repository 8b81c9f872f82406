"""Run main.py with every warning shown each time it fires, and count them by message.

    python benchmarks/warnings_census.py [--stacks 1] -- --config configs/stag4d.yaml path=DATA ... total_steps=1000

torch's C++ warnings (TORCH_WARN_ONCE) fire once per process, which hides how often their cause
recurs; here torch's warn-always mode is on, so a warning that fires every step shows as thousands.
Prints, at the end, each distinct warning (its first 100 characters) with its count, and the Python
stack of its first ``--stacks`` occurrences as they happen (a C++ warning from the autograd engine
surfaces at the ``backward`` or ``autograd.grad`` call that ran it). Session 26 found the graphed
deformation field's cross-stream gradient accumulation this way (about 30 a fine step).
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", type=int, default=1, help="stacks printed per distinct warning")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's arguments")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args

    counts: collections.Counter[str] = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        key = f"{category.__name__}: {str(message).splitlines()[0][:100]}"
        counts[key] += 1
        if counts[key] <= args.stacks:
            print(f"== warning ({filename}:{lineno}) {key}", file=sys.stderr, flush=True)
            traceback.print_stack(limit=12, file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always")
    import torch

    torch.set_warn_always(True)
    from stag4d.training.cli import main as main_py

    code = 0
    try:
        main_py(main_args)
    except SystemExit as exit_:  # main.py's one-line errors end in SystemExit; the census still prints
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        print("\n| warnings | message |\n|---|---|", file=sys.stderr)
        for key, count in counts.most_common():
            print(f"| {count} | {key.replace('|', '/')} |", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
