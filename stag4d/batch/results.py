"""What a batch did: a record per clip (kept across reruns) and the results table (CSV + Markdown).

Stage statuses are those of :mod:`stag4d.batch.records` (a ``done`` stage shows the times of the
batch run that made it, blank when something else did); a clip is ``ok`` when every stage is ok,
done or n/a.

The table has a row per clip: the status and wall seconds of each stage, the clip's total wall
and GPU seconds (wall time x GPUs held), the trained step and its Gaussian count, and the means
of ``evaluate``'s metrics per view group (``reference``, ``anchors``, ``eval`` = held-out views),
then the mean over the ``ok`` clips, as a paper's table shows it. Both files are written
atomically after every stage, so the table of a killed batch is whole.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Optional, Sequence

from plyfile import PlyData

from gs_renderer import MODEL_PLY
from stag4d.batch.records import COMPLETE, StageRecord
from stag4d.batch.stages import ClipPlan
from stag4d.evaluation.evaluate import HIGHER_IS_BETTER, VIEW_GROUPS
from stag4d.files import write_text

TABLE_CSV = "results.csv"
TABLE_MARKDOWN = "results.md"
DECIMALS = {"psnr": 2, "fvd": 1, "fid_vid": 2}  # other metrics: 4


def gaussian_count(step_folder: Optional[str]) -> Optional[int]:
    """Vertices in the step's model.ply (read from the header; the data is memory-mapped, not read)."""
    if step_folder is None:
        return None
    try:
        return PlyData.read(os.path.join(step_folder, MODEL_PLY), mmap="r")["vertex"].count
    except Exception:  # noqa: BLE001 - a damaged file only leaves the cell blank
        return None


def metric_means(metrics_file: Optional[str]) -> dict[str, float]:
    """``{group}_{metric}`` -> the group's mean, from evaluate's JSON."""
    if metrics_file is None:
        return {}
    try:
        with open(metrics_file) as f:
            groups = json.load(f)["groups"]
    except (OSError, ValueError, KeyError):
        return {}
    return {f"{group}_{name}": value for group, entry in groups.items()
            for name, value in entry.get("mean", {}).items() if isinstance(value, (int, float))}


def clip_status(plan: ClipPlan, records: dict[str, StageRecord], stages: Sequence[str]) -> tuple[str, str]:
    """(status, one-line error) of a clip."""
    if plan.error:
        return "failed", plan.error
    for stage in stages:
        record = records.get(stage)
        if record is not None and record.status == "failed":
            return "failed", f"{stage}: {record.error}"
    statuses = [records[s].status if s in records else "" for s in stages]
    if all(s in COMPLETE for s in statuses):
        return "ok", ""
    return ("running" if "running" in statuses else "pending"), ""


def clip_row(plan: ClipPlan, records: dict[str, StageRecord], stages: Sequence[str]) -> dict[str, Any]:
    status, error = clip_status(plan, records, stages)
    row: dict[str, Any] = {"clip": plan.clip.name, "status": status}
    walls, gpus = [], []
    for stage in stages:
        record = records.get(stage)
        row[stage] = record.status if record else ("blocked" if plan.error else "")
        row[f"{stage}_s"] = record.wall_s if record else None
        if record is not None and record.wall_s is not None:
            walls.append(record.wall_s)
            gpus.append(record.gpu_s or 0.0)
    row["wall_s"] = sum(walls) if walls else None
    row["gpu_s"] = sum(gpus) if gpus else None
    step = plan.trained_step()
    row["step"] = int(os.path.basename(step)) if step else None
    row["gaussians"] = gaussian_count(step)
    row.update(metric_means(plan.metrics_file()))
    row["error"] = error
    return row


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The ``{group}_{metric}`` keys present, by view group (reference, anchors, eval), then first seen."""
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k.split("_", 1)[0] in VIEW_GROUPS and k not in seen]
    return sorted(seen, key=lambda k: (VIEW_GROUPS.index(k.split("_", 1)[0]), seen.index(k)))


def columns(stages: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    stage_columns = [c for s in stages for c in (s, f"{s}_s")]
    return ["clip", "status", *stage_columns, "wall_s", "gpu_s", "step", "gaussians", *metric_columns(rows), "error"]


def mean_row(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> Optional[dict[str, Any]]:
    """Means of the numeric columns over the ``ok`` clips (None when there are none)."""
    done = [r for r in rows if r["status"] == "ok"]
    if not done:
        return None
    mean: dict[str, Any] = {"clip": "mean", "status": f"{len(done)} of {len(rows)} clips"}
    for col in cols[2:]:
        values = [r.get(col) for r in done]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if values:
            mean[col] = sum(values) / len(values)
    return mean


def _number(col: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, (int, float)):
        return str(value)
    if col in ("step", "gaussians"):
        return str(int(round(value)))
    if col.endswith("_s"):
        return f"{value:.1f}"
    return f"{value:.{DECIMALS.get(col.split('_', 1)[1], 4)}f}"


def to_csv(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: f"{row[c]:.6g}" if isinstance(row.get(c), float) else row.get(c, "") for c in cols})
    return out.getvalue()


def _header(col: str) -> str:
    if col.split("_", 1)[0] in VIEW_GROUPS:
        group, metric = col.split("_", 1)
        return f"{group} {metric}{'↑' if metric in HIGHER_IS_BETTER else '↓'}"
    return {"wall_s": "wall s", "gpu_s": "GPU s", "gaussians": "Gaussians"}.get(col, col)


def to_markdown(rows: Sequence[dict[str, Any]], stages: Sequence[str], cols: Sequence[str]) -> str:
    """One cell per stage (``ok 12.3 s``), then the totals, Gaussians, metrics and the error."""
    shown = [c for c in cols if not (c.endswith("_s") and c[:-2] in stages)]
    lines = ["| " + " | ".join(_header(c) for c in shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = []
        for col in shown:
            if col in stages:
                seconds = _number(f"{col}_s", row.get(f"{col}_s"))
                cells.append(" ".join(x for x in (row.get(col) or "", f"{seconds} s" if seconds else "") if x))
            else:
                cells.append(_number(col, row.get(col)).replace("|", "/"))
        if row["clip"] == "mean":
            cells[0] = "**mean**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(out: str, plans: Sequence[ClipPlan], records: dict[str, dict[str, StageRecord]],
                stages: Sequence[str]) -> list[dict[str, Any]]:
    """Write ``results.csv`` and ``results.md`` into ``out`` (atomically); returns the rows, mean last."""
    rows = [clip_row(plan, records.get(plan.clip.name, {}), stages) for plan in plans]
    cols = columns(stages, rows)
    mean = mean_row(rows, cols)
    table = rows + ([mean] if mean else [])
    write_text(os.path.join(out, TABLE_CSV), to_csv(table, cols))
    write_text(os.path.join(out, TABLE_MARKDOWN), to_markdown(table, stages, cols))
    return table


__all__ = ["TABLE_CSV", "TABLE_MARKDOWN", "clip_row", "clip_status", "mean_row", "to_csv", "to_markdown",
           "write_table"]
