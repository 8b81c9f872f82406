"""Atomic file output: write to a temporary file in the same folder, flush it to the disk, then
rename. An interrupted run never leaves a half-written file under the final name, and a full disk
is one line that says so (the file that was there before stays intact).

Temporary files are named ``.<name>.<random>.tmp<ext>``; :func:`remove_temporary_files` deletes
those that a killed process left behind.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from stag4d.errors import DataError, DiskFull

TEMPORARY_PATTERN = ".*.tmp*"


NEARLY_FULL_BYTES = 1 << 20  # a failed write with less than this left on its disk failed for want of space


def _is_disk_full(err: BaseException, folder: str) -> bool:
    """An OSError with ENOSPC/EDQUOT, or any write failure of a library while the folder's disk is
    (nearly) full: torch's zip writer, for one, reports it as "RuntimeError: [enforce fail at
    inline_container.cc...] unexpected pos"."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, (OSError, RuntimeError, ValueError)):
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success flush it to the disk and rename it to
    ``path`` (then flush the folder, so the rename survives a crash too).

    The temporary name keeps the extension, so writers that pick a format by it still work.

    Raises:
        DiskFull: the disk is full (one line naming the folder); ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the final file the usual permissions (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # not every file system lets a folder be flushed
            _fsync(folder)
    except BaseException as err:
        full = _is_disk_full(err, folder)  # before the partial file is removed, which frees space
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if full:
            raise DiskFull(f"the disk is full: could not write {path}; free space in {folder} (the previous "
                           "files there are intact)") from None
        raise


def remove_temporary_files(folder: str) -> list[str]:
    """Delete the temporary files that killed writers left under ``folder`` (recursively)."""
    removed = []
    for path in glob.glob(os.path.join(folder, "**", TEMPORARY_PATTERN), recursive=True):
        if os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def save_image(path: str, image: np.ndarray) -> None:
    """Save a uint8 image [H, W, C] (C = 1, 3 or 4) atomically; format from the extension."""

    if image.dtype != np.uint8:
        raise TypeError(f"save_image wants uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(path))


def torch_save(obj, path: str) -> None:
    """``torch.save`` atomically."""

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def _pil_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(ext, "PNG")


# ------------------------------------------------------------------------------------------------
# many files at once


def map_on_threads(function: Callable[..., Any], *iterables: Any, threads: int, name: str) -> Iterator[Any]:
    """``function`` over ``iterables`` on up to ``threads`` threads (at most one per CPU core),
    yielding results in order. The first failure in that order is raised, and the calls still
    queued behind it are cancelled (those already running finish), so a failed read or write stops
    the work instead of going through every remaining file first."""
    pool = ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1)), name)
    try:
        yield from pool.map(function, *iterables)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# writing while the work goes on


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a detached CPU copy of its own (dicts, lists and tuples
    are walked): what a :class:`BackgroundWriter` job may hold while training changes the originals
    in place (a CPU tensor's ``.cpu()`` would be the same memory)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: host_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(value) for value in obj)
    return obj


class BackgroundWriter:
    """Runs file-writing jobs on one worker thread, one after another in the order given, so that
    the caller goes on (training) while a save or a validation reaches the disk.

    A job must hold only data that nothing else changes (:func:`host_copy`). At most
    ``max_pending`` jobs wait; a further :meth:`submit` blocks until one is done, so memory stays
    bounded. The first failure (a full disk, say) is raised in the caller's thread by the next
    :meth:`submit` or :meth:`wait`, and the jobs queued after it are dropped: a save whose files
    cannot all be written is never completed by a later one. The thread is a daemon: a process
    that exits without :meth:`wait` loses the jobs in flight as a kill would (every file is atomic).
    """

    def __init__(self, max_pending: int = 1):
        self._jobs: "queue.Queue[Callable[[], None]]" = queue.Queue(maxsize=max_pending)
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (no arguments, its result unused); raises an earlier job's failure."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="stag4d-writer", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def wait(self) -> None:
        """Return once every queued job is done; raises the first failure (once)."""
        self._jobs.join()
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if self._error is None:
                    job()
            except BaseException as err:  # handed to the caller's thread
                self._error = err
            finally:
                self._jobs.task_done()


def wait_for_file(path: str, timeout: float, setting_name: str, timeout_name: str, poll_seconds: float = 0.5,
                  report_seconds: float = 30.0, report: Callable[[str], None] = print,
                  writer: str = "gen_mv --json") -> float:
    """Wait until ``path`` exists; returns the seconds waited. Meant for a file written atomically
    (renamed into place) by another process (``writer``, named in the timeout's message), so that
    once it exists it is complete. Reports a line every ``report_seconds``.

    Raises:
        errors.DataError: not there after ``timeout`` seconds (one line naming the two settings).
    """
    start = time.monotonic()
    next_report = start + report_seconds
    while not os.path.exists(path):
        now = time.monotonic()
        if now - start >= timeout:
            raise DataError(f"{setting_name}={path}: it did not appear within {timeout:.0f} s; check that the "
                            f"process that writes it ({writer}) is running, or raise {timeout_name}")
        if now >= next_report:
            report(f"waiting for {path} ({now - start:.0f} s)")
            next_report += report_seconds
        time.sleep(min(poll_seconds, max(0.0, start + timeout - now)))
    return time.monotonic() - start
