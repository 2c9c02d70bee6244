"""Pieces every benchmark parser shares: finding annotation files, resolving video ids to files, and
turning parsed (video, caption) rows into :class:`SplitRecords` with missing videos handled and counted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tvr.data.records import SplitRecords, TextRef, VideoRef

log = logging.getLogger(__name__)

MISSING_VIDEO_POLICIES = ("drop", "error")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp", ".wmv", ".flv")


class DatasetFileError(FileNotFoundError):
    """An annotation file or folder a dataset needs is not where the config says."""


def require_file(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise DatasetFileError(
            f"{dataset}: annotation file not found: {path}\nexpected layout (set data.source.root=<folder>):\n{layout}"
        )
    return path


@dataclass
class Row:
    """One parsed annotation: a caption (or paragraph) of a video, optionally for a time span."""

    video_id: str
    caption: str
    start: float | None = None
    end: float | None = None


class VideoIndex:
    """Maps video ids to files under ``video_dir`` (walked recursively, once).

    An id matches a file whose full name equals it, else a file whose name minus its last extension
    equals it (video extensions win over other files with the same stem). ``alias_prefix`` also tries
    ``<prefix><id>`` (ActivityNet files may or may not carry ``v_``). ``check_files=False`` skips the walk
    and assumes ``<video_dir>/<id><default_extension>``, so annotation parsing can run without videos.
    """

    def __init__(self, video_dir: Path, check_files: bool = True, default_extension: str = ".mp4") -> None:
        self.video_dir = video_dir
        self.check_files = check_files
        self.default_extension = default_extension
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        if not check_files:
            return
        if not video_dir.is_dir():
            raise DatasetFileError(f"video folder not found: {video_dir} (set data.source.video_dir=<folder>)")
        for folder, _, files in os.walk(video_dir):
            for name in sorted(files):
                path = Path(folder) / name
                self.by_name.setdefault(name, path)
                stem = name.rsplit(".", 1)[0] if "." in name else name
                current = self.by_stem.get(stem)
                if current is None or (current.suffix.lower() not in VIDEO_EXTENSIONS and path.suffix.lower() in VIDEO_EXTENSIONS):
                    self.by_stem[stem] = path

    def resolve(self, video_id: str, alias_prefix: str = "") -> Path | None:
        if not self.check_files:
            return self.video_dir / f"{video_id}{self.default_extension}"
        for key in (video_id, f"{alias_prefix}{video_id}" if alias_prefix else None):
            if key is not None and (path := self.by_name.get(key) or self.by_stem.get(key)):
                return path
        return None


@dataclass
class SplitBuilder:
    """Collects rows in order and builds the split, dropping (or refusing) rows whose video is missing."""

    dataset: str
    split: str
    index: VideoIndex
    missing_video: str = "drop"
    alias_prefix: str = ""
    info: dict = field(default_factory=dict)

    def build(self, rows: list[Row], train_unit: str = "pair") -> SplitRecords:
        videos: dict[str, VideoRef] = {}
        missing: dict[str, None] = {}
        texts: list[TextRef] = []
        for row in rows:
            if row.video_id in missing:
                continue
            if row.video_id not in videos:
                path = self.index.resolve(row.video_id, self.alias_prefix)
                if path is None:
                    missing[row.video_id] = None
                    continue
                videos[row.video_id] = VideoRef(row.video_id, path, row.start, row.end)
            texts.append(TextRef(len(texts), row.video_id, row.caption))
        if missing:
            examples = ", ".join(list(missing)[:5])
            message = f"{self.dataset} {self.split}: {len(missing)} videos listed in the annotations have no file under {self.index.video_dir} (e.g. {examples})"
            if self.missing_video == "error":
                raise DatasetFileError(message)
            log.warning("%s; their captions are dropped", message)
        info = {**self.info, "missing_videos": len(missing), "missing_video_examples": list(missing)[:20],
                "train_unit": train_unit}
        return SplitRecords(self.split, list(videos.values()), texts, info=info)
