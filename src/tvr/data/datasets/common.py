"""Pieces every benchmark parser shares: reading annotation files, resolving video ids to files, and
turning parsed (video, caption) rows into :class:`SplitRecords` with missing videos handled and counted.

Every reading helper reports a malformed file as an :class:`AnnotationError` that names the file, the
line (or JSON key / record index) and what was expected there, so a parser never lets a bare
``JSONDecodeError``, ``KeyError`` or ``TypeError`` escape from a user's file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.errors import AnnotationError

log = logging.getLogger(__name__)

MISSING_VIDEO_POLICIES = ("drop", "error")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp", ".wmv", ".flv")


class DatasetFileError(AnnotationError, FileNotFoundError):
    """An annotation file or folder a dataset needs is not where the config says (still a
    ``FileNotFoundError`` for callers that catch that)."""


def require_file(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise DatasetFileError(
            f"{dataset}: annotation file not found: {path}\nexpected layout (set data.source.root=<folder>):\n{layout}"
        )
    return path


# ---------------------------------------------------------------------------------------------- reading
def read_annotation_text(path: Path) -> str:
    """The file's text as UTF-8 (a leading byte-order mark, as spreadsheet programs write, is dropped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise AnnotationError(
            f"{path}: line {line}: byte {error.start} is not UTF-8 text ({error.reason}); expected a UTF-8 text file"
        ) from error


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of every non-blank line."""
    lines = read_annotation_text(path).splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def read_id_list(path: Path) -> list[str]:
    """A split list: one id per line, blank lines ignored (DiDeMo, MSVD)."""
    return [line for _, line in read_lines(path)]


_JSON_KINDS = {"object": dict, "array": list, "string": str, "number": (int, float)}


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return next((kind for kind, types in _JSON_KINDS.items() if isinstance(value, types)), type(value).__name__)


def a_kind(value: Any) -> str:
    """What a parsed value is, in a sentence: ``an array``, ``a string``, ``null``..."""
    return with_article(json_kind(value))


def with_article(kind: str) -> str:
    return kind if kind == "null" else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def read_json(path: Path, kind: str, expected: str) -> Any:
    """Parse a JSON file whose top level is a JSON ``kind`` ("object" or "array"); ``expected`` says what
    the file should hold, for the error message."""
    text = read_annotation_text(path)
    if not text.strip():
        raise AnnotationError(f"{path}: the file is empty; expected {expected}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"{path}: line {error.lineno}, column {error.colno}: invalid JSON ({error.msg}); expected {expected}"
        ) from error
    if json_kind(value) != kind:
        raise AnnotationError(f"{path}: the top level is {a_kind(value)}; expected {expected}")
    return value


def json_field(path: Path, where: str, record: Any, key: str, kind: str) -> Any:
    """``record[key]``, which must be a JSON ``kind``; ``where`` locates the record in the file (e.g.
    ``record 17`` or ``key "v_QOlSCBRmfWY"``)."""
    if json_kind(record) != "object":
        raise AnnotationError(f'{path}: {where} is {a_kind(record)}; expected an object with "{key}"')
    if key not in record:
        present = ", ".join(f'"{name}"' for name in record) or "no keys"
        raise AnnotationError(
            f'{path}: {where} has no "{key}" (it has {present}); expected "{key}" to be {with_article(kind)}'
        )
    value = record[key]
    if json_kind(value) != kind:
        raise AnnotationError(f'{path}: {where}: "{key}" is {a_kind(value)}; expected {with_article(kind)}')
    return value


def require_strings(path: Path, where: str, values: Any, expected: str = "a list of strings") -> list[str]:
    """``values`` itself, checked to be a list of strings (a caption list, a tokenised caption)."""
    if not isinstance(values, list):
        raise AnnotationError(f"{path}: {where} is {a_kind(values)}; expected {expected}")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise AnnotationError(f"{path}: {where}, item {index} is {a_kind(value)}; expected {expected}")
    return values


def read_csv_columns(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The given columns of every row of a CSV file with a header line, in file order; a missing column,
    a row without a value for one of them, or a malformed line names the line."""
    expected = f"a comma-separated file whose first line names the columns {', '.join(columns)}"
    reader = csv.DictReader(io.StringIO(read_annotation_text(path), newline=""))
    try:
        header = reader.fieldnames
        if header is None:
            raise AnnotationError(f"{path}: the file is empty; expected {expected}")
        absent = [column for column in columns if column not in header]
        if absent:
            raise AnnotationError(
                f"{path}: line 1: no column {', '.join(absent)} in the header ({','.join(header)}); expected {expected}"
            )
        rows = []
        for row in reader:
            empty = [column for column in columns if not row[column]]
            if empty:
                raise AnnotationError(
                    f"{path}: line {reader.line_num}: no value for {', '.join(empty)}; expected "
                    f"{len(header)} comma-separated fields ({','.join(header)})"
                )
            rows.append({column: row[column] for column in columns})
    except csv.Error as error:
        raise AnnotationError(
            f"{path}: line {reader.line_num}: malformed CSV ({error}); expected {expected}"
        ) from error
    return rows


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
                if current is None or (
                    current.suffix.lower() not in VIDEO_EXTENSIONS and path.suffix.lower() in VIDEO_EXTENSIONS
                ):
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
        if not rows:  # e.g. a split list and a caption file that share no id: every metric would be empty
            raise AnnotationError(
                f"{self.dataset} {self.split}: the annotation files ({self.info.get('file', 'of the split')}) "
                "give no (video, caption) pair; check that the split's files belong together"
            )
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
            if not videos:  # dropping them all would leave nothing to train or score on
                raise DatasetFileError(f"{message}, i.e. none has; check data.source.video_dir and the file names")
            log.warning("%s; their captions are dropped", message)
        info = {
            **self.info,
            "missing_videos": len(missing),
            "missing_video_ids": list(missing),
            "train_unit": train_unit,
        }
        return SplitRecords(self.split, list(videos.values()), texts, info=info)
