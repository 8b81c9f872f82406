"""User-facing errors: one clear line that names the file or setting and the fix.

Entry-point scripts catch :class:`UserError` and print ``error: <message>`` without a traceback
(see :func:`exit_on_user_error`).
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """An error caused by input or configuration that the user can fix."""


class DataError(UserError):
    """Bad or missing input data."""


class ModelUnavailable(UserError):
    """A model (weights or code) cannot be loaded."""


def exit_on_user_error(main):
    """Decorator for script entry points: print UserErrors as one line and exit with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
