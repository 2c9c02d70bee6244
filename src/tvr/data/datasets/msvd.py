"""MSVD (datasets spec §3): 1,200 / 100 / 670 videos, ~41 captions each; multi-caption evaluation.

Captions come from CLIP4Clip's ``raw-captions.pkl`` (id -> list of token lists) or X-Pool's
``captions_msvd.json`` (id -> list of strings); both give identical pairs. The pickle is read with an
unpickler that only admits dicts, lists and strings, so a tampered file cannot run code.
"""

from __future__ import annotations

import json
import pickle
from functools import cached_property

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import DatasetFileError, Row
from tvr.data.records import SplitRecords

CAPTION_FILES = ("raw-captions.pkl", "captions_msvd.json")


class _CaptionUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"raw-captions.pkl may only hold dicts, lists and strings; found {module}.{name}")


def load_raw_captions(path) -> dict[str, list[str]]:
    with open(path, "rb") as handle:
        raw = _CaptionUnpickler(handle).load()
    return {video: [" ".join(tokens) for tokens in captions] for video, captions in raw.items()}


@register_dataset("msvd")
class MSVD(FileDataset):
    layout = (
        "  <root>/raw-captions.pkl or <root>/captions_msvd.json\n"
        "  <root>/train_list.txt, val_list.txt, test_list.txt\n"
        "  <root>/videos/<video_id>.avi               (any extension, sub-folders allowed)"
    )
    default_extension = ".avi"

    def __init__(self, root, caption_file: str | None = None, **common) -> None:
        super().__init__(root, **common)
        if caption_file is not None and caption_file not in CAPTION_FILES:
            raise ValueError(f"msvd caption_file must be one of {', '.join(CAPTION_FILES)}, got '{caption_file}'")
        self.caption_file = caption_file

    @property
    def resolved_caption_file(self) -> str:
        if self.caption_file:
            return self.caption_file
        for name in CAPTION_FILES:  # CLIP4Clip's pickle first
            if (self.anno_dir / name).is_file():
                return name
        raise DatasetFileError(f"msvd: neither {' nor '.join(CAPTION_FILES)} found in {self.anno_dir}\nexpected layout:\n{self.layout}")

    def required_files(self, splits: tuple[str, ...]) -> list[str]:
        return [self.resolved_caption_file, *(f"{split}_list.txt" for split in splits)]

    @cached_property
    def captions(self) -> dict[str, list[str]]:
        path = self.annotation(self.resolved_caption_file)
        if path.suffix == ".pkl":
            return load_raw_captions(path)
        return json.loads(path.read_text())

    def load_split(self, split: str) -> SplitRecords:
        if split not in ("train", "val", "test"):
            raise ValueError(f"msvd has splits train, val, test; got '{split}'")
        list_file = self.annotation(f"{split}_list.txt")
        video_ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        missing = [video for video in video_ids if video not in self.captions]
        if missing:
            raise DatasetFileError(f"msvd: {len(missing)} videos of {list_file.name} have no captions (e.g. {missing[:3]})")
        rows = [Row(video, caption) for video in video_ids for caption in self.captions[video]]
        return self.builder(split, info={"file": list_file.name}).build(rows)

    def variant(self) -> dict:
        return {"caption_file": self.resolved_caption_file}
