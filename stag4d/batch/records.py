"""The record of one stage of one clip: what it did and what it cost.

The task that runs a stage writes its record (``clips/<clip>/<stage>.json``, atomically) when the
stage ends, so the times of completed stages survive a killed driver; a rerun that finds the
stage's outputs complete shows them as ``done`` with those times.

Statuses: ``ok`` (ran now), ``done`` (complete outputs existed, not rerun), ``failed``,
``blocked`` (an earlier stage of the clip failed), ``n/a`` (prepare_video of a ready dataset),
while the batch runs ``queued`` / ``running``, ``interrupted`` (the driver stopped while it ran);
``""`` = not reached.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

from stag4d.files import write_text

SETTLED = ("ok", "done", "failed", "blocked", "n/a")  # counted as finished by the progress display
COMPLETE = ("ok", "done", "n/a")  # a clip whose stages are all these is ok


@dataclass
class StageRecord:
    status: str
    wall_s: Optional[float] = None
    gpu_s: Optional[float] = None  # wall time x GPUs the task held
    error: Optional[str] = None  # one line
    node: Optional[str] = None
    finished: Optional[str] = None  # local time the stage ended


def record_file(clip_dir: str, stage: str) -> str:
    return os.path.join(clip_dir, f"{stage}.json")


def write_record(clip_dir: str, stage: str, record: StageRecord) -> None:
    record.finished = record.finished or time.strftime("%Y-%m-%d %H:%M:%S")
    write_text(record_file(clip_dir, stage), json.dumps(asdict(record), indent=1))


def read_record(clip_dir: str, stage: str) -> Optional[StageRecord]:
    """The record a stage's last run left, or None."""
    try:
        with open(record_file(clip_dir, stage)) as f:
            return StageRecord(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


__all__ = ["COMPLETE", "SETTLED", "StageRecord", "read_record", "record_file", "write_record"]
