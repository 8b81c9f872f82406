"""The clips of a batch: found in a folder or read from a list file.

A clip is one of

* ``video``: a video or GIF file (:data:`stag4d.data.prepare_video.VIDEO_EXTENSIONS`), made into a
  dataset by the ``prepare_video`` stage;
* ``images``: a folder of image files (no ``ref/``), likewise;
* ``dataset``: a ready dataset folder (it holds ``ref/``), used in place.

Its name is the file's or folder's name without extension; it names the run (``save_path``),
the prepared dataset and the clip's row in the results table, so names must be unique.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from stag4d.data.prepare_video import GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from stag4d.errors import DataError

KINDS = ("video", "images", "dataset")
LIST_COMMENT = "#"


@dataclass(frozen=True)
class Clip:
    """One input of the batch: ``source`` (absolute path) of ``kind``, named ``name``."""

    name: str
    source: str
    kind: str

    @property
    def needs_preparing(self) -> bool:
        """A video or image folder becomes a dataset through ``prepare_video``."""
        return self.kind != "dataset"


def clip_kind(path: str) -> Optional[str]:
    """``video``, ``images`` or ``dataset`` for a path that is a clip, else None."""
    if os.path.isfile(path):
        return "video" if path.lower().endswith(VIDEO_EXTENSIONS + GIF_EXTENSIONS) else None
    if not os.path.isdir(path):
        return None
    if os.path.isdir(os.path.join(path, "ref")):
        return "dataset"
    has_images = any(name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
                     for name in os.listdir(path))
    return "images" if has_images else None


def clip_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


def _checked_unique(clips: list[Clip], where: str) -> list[Clip]:
    seen: dict[str, str] = {}
    for clip in clips:
        if clip.name in seen:
            raise DataError(f"{where}: two clips are named '{clip.name}' ({seen[clip.name]} and {clip.source}); "
                            "rename one (the name is the run's and the table row's)")
        seen[clip.name] = clip.source
    if not clips:
        raise DataError(f"{where} holds no clips: give videos ({', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)}), "
                        "folders of images, or dataset folders with ref/")
    return clips


def clips_in_folder(folder: str, exclude: tuple[str, ...] = ()) -> tuple[list[Clip], list[str]]:
    """(clips, names of the entries that are not clips) of a folder, sorted by name.

    ``exclude``: absolute paths to leave out (the batch's own output folder when it lies inside).
    """
    folder = os.path.abspath(folder)
    clips, ignored = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or path in exclude:
            continue
        kind = clip_kind(path)
        if kind is None:
            ignored.append(name)
        else:
            clips.append(Clip(clip_name(path), path, kind))
    return _checked_unique(clips, folder), ignored


def clips_in_list(list_file: str) -> list[Clip]:
    """The clips of a list file: one path per line (relative to the file's folder), ``#`` comments."""
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        with open(list_file) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{list_file} cannot be read as a list of clips ({type(err).__name__}): give a text file "
                        "with one path per line") from None
    clips = []
    for number, line in enumerate(lines, 1):
        entry = line.split(LIST_COMMENT, 1)[0].strip()
        if not entry:
            continue
        path = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
        kind = clip_kind(path)
        if kind is None:
            what = "does not exist" if not os.path.exists(path) else "is not a video, an image folder or a dataset"
            raise DataError(f"{list_file} line {number}: {path} {what}; fix or remove the line")
        clips.append(Clip(clip_name(path), path, kind))
    return _checked_unique(clips, list_file)


def find_clips(source: str, exclude: tuple[str, ...] = ()) -> tuple[list[Clip], list[str]]:
    """(clips, ignored entries) of a folder of clips or a list file."""
    if os.path.isdir(source):
        if clip_kind(source) == "dataset":
            raise DataError(f"{source} is one dataset folder (it holds ref/): give the folder that contains it, "
                            "or a list file naming it")
        return clips_in_folder(source, exclude)
    if os.path.isfile(source):
        if clip_kind(source) == "video":
            raise DataError(f"{source} is one video: give the folder that contains it, or a list file naming it")
        return clips_in_list(source), []
    raise DataError(f"{source} does not exist: give a folder of clips or a list file (one path per line)")


__all__ = ["Clip", "KINDS", "clip_kind", "clips_in_folder", "clips_in_list", "find_clips"]
