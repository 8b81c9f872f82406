"""User-facing errors: one clear line that names the file or setting and the fix.

Entry-point scripts catch :class:`UserError` and print ``error: <message>`` without a traceback
(see :func:`exit_on_user_error`).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import warnings
from typing import Iterator


class UserError(Exception):
    """An error caused by input or configuration that the user can fix."""


class DataError(UserError):
    """Bad or missing input data."""


class ModelUnavailable(UserError):
    """A model (weights or code) cannot be loaded."""


class DiskFull(UserError):
    """A write failed because the disk (or quota) is full."""


class TrainingStopped(UserError):
    """Training stopped on purpose: a signal (after saving), or non-finite values (nothing saved).

    ``exit_code`` is what the process exits with (128 + the signal number for signals, as shells
    report them; 3 for non-finite values).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


ERROR_PREFIX = "error: "  # what exit_on_user_error prints before the one-line message
MAX_ERROR_CHARS = 300  # a quoted stage error longer than this is cut (last_error_message)


def exit_on_user_error(main):
    """Decorator for script entry points: print UserErrors as one line and exit with status 2
    (or the error's own ``exit_code``)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
            sys.exit(getattr(err, "exit_code", 2))

    return wrapper


def last_error_message(text: str) -> str:
    """The one-line error in a stage's output (the batch runner and video_to_4d quote it): its last
    ``error: ...`` line without the prefix, else its last line (a traceback's exception); progress
    bars' carriage returns count as line ends."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            message = line[len(ERROR_PREFIX):]
            break
    else:
        message = lines[-1] if lines else "no output"
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS - 3] + "..."


def file_tail(path: str, size: int = 65536) -> str:
    """The last ``size`` bytes of a text file (a stage's log), decoded; "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@contextlib.contextmanager
def quiet_hub_warnings(loggers: tuple[str, ...] = ("huggingface_hub", "diffusers", "transformers")) -> Iterator[None]:
    """Raise the model libraries' loggers to ERROR and ignore their Python warnings during a load;
    when stderr is not a terminal, turn transformers' and diffusers' progress bars off too.

    Offline, the hub client logs a warning for every retried request (and diffusers a deprecation
    warning) before giving up; our loaders turn the failure into one ModelUnavailable line, which
    those messages would bury. In a log file a bar (transformers' "Loading weights" for every
    model) is carriage-return noise; on a terminal it stays.
    """
    for name in loggers:  # a library sets its logger's level when first imported: import it first
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    bars_turned_off = []
    if not sys.stderr.isatty():
        for name in ("transformers", "diffusers"):
            with contextlib.suppress(ImportError):
                library_logging = importlib.import_module(f"{name}.utils.logging")
                if library_logging.is_progress_bar_enabled():
                    library_logging.disable_progress_bar()
                    bars_turned_off.append(library_logging)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
        for library_logging in bars_turned_off:
            library_logging.enable_progress_bar()
