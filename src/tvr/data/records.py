"""The normalised records every dataset parser produces (datasets spec §0).

Parsers turn a benchmark's annotation files into these plain objects; nothing here touches torch, so
parsers can be tested on the real annotation files without videos or a GPU.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from pathlib import Path


@contextlib.contextmanager
def gc_paused():
    """Build many small objects (a split's records, its training pairs) without CPython's cyclic collector:
    every so many allocations it re-scans everything alive, records included, which made building MSR-VTT's
    180k pairs take 20 times as long as the work itself. Nothing built here forms reference cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class VideoRef:
    """A video (or a time span of one) that a split refers to. Ids stay strings everywhere."""

    video_id: str
    path: Path
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class TextRef:
    text_id: int
    video_id: str
    caption: str


@dataclass
class SplitRecords:
    """One split: deduplicated videos in a fixed order, and texts, each with exactly one positive video.

    Training iterates over ``texts`` (one sample = one (caption, video) pair); evaluation scores every
    text against every video, so ``text_to_video`` gives each text's ground-truth column.
    """

    name: str
    videos: list[VideoRef]
    texts: list[TextRef]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [video.video_id for video in self.videos]
        if len(set(ids)) != len(ids):
            raise ValueError(f"split '{self.name}' lists a video more than once")
        self._column = {video_id: index for index, video_id in enumerate(ids)}
        unknown = {text.video_id for text in self.texts} - self._column.keys()
        if unknown:
            raise ValueError(f"split '{self.name}' has texts for unknown videos: {sorted(unknown)[:5]}")

    def video_index(self, video_id: str) -> int:
        return self._column[video_id]

    @property
    def text_to_video(self) -> list[int]:
        return [self._column[text.video_id] for text in self.texts]

    @property
    def is_one_text_per_video(self) -> bool:
        return len(self.texts) == len(self.videos) and self.text_to_video == list(range(len(self.videos)))
