"""MSVD (datasets spec §3): 1,200 / 100 / 670 videos, ~41 captions each; multi-caption evaluation.

Captions come from CLIP4Clip's ``raw-captions.pkl`` (id -> list of token lists) or X-Pool's
``captions_msvd.json`` (id -> list of strings); both give identical pairs. The pickle is read with an
unpickler that only admits dicts, lists and strings, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from functools import cached_property
from pathlib import Path

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import DatasetFileError, Row, a_kind, read_id_list, read_json, require_strings
from tvr.data.records import SplitRecords
from tvr.errors import AnnotationError

CAPTION_FILES = ("raw-captions.pkl", "captions_msvd.json")


class _CaptionUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"raw-captions.pkl may only hold dicts, lists and strings; found {module}.{name}")


def load_raw_captions(path: Path) -> dict[str, list[str]]:
    """CLIP4Clip's ``{video_id: [[token, ...], ...]}`` pickle, each caption's tokens joined by spaces."""
    try:
        with open(path, "rb") as handle:
            raw = _CaptionUnpickler(handle).load()
    except (
        Exception
    ) as error:  # refused code, or a truncated or foreign file (UnpicklingError, EOFError, ValueError...)
        raise AnnotationError(
            f"{path}: not a readable caption pickle ({type(error).__name__}: {error}); "
            "expected CLIP4Clip's raw-captions.pkl {video_id: [[word, ...], ...]}"
        ) from error
    return captions_by_video(path, raw, tokenised=True)


def load_caption_json(path: Path) -> dict[str, list[str]]:
    """X-Pool's ``{video_id: [caption, ...]}`` JSON."""
    return captions_by_video(
        path, read_json(path, "object", 'an object {"<video id>": ["<caption>", ...]}'), tokenised=False
    )


def captions_by_video(path: Path, raw, tokenised: bool) -> dict[str, list[str]]:
    """Each video's caption strings, checked: both files map video ids to caption lists, whose captions
    are strings in the JSON and lists of words (joined here by spaces) in the pickle."""
    caption = "a list of word strings" if tokenised else "a string"
    if not isinstance(raw, dict):
        raise AnnotationError(
            f"{path}: holds {a_kind(raw)}; expected a mapping video id -> list of captions, each {caption}"
        )
    captions = {}
    for video, entries in raw.items():
        where = f'key "{video}"'
        if not isinstance(entries, list):
            raise AnnotationError(
                f"{path}: {where} holds {a_kind(entries)}; expected a list of captions, each {caption}"
            )
        if tokenised:
            captions[video] = [
                " ".join(require_strings(path, f"{where}, caption {index}", tokens, caption))
                for index, tokens in enumerate(entries)
            ]
        else:
            captions[video] = require_strings(path, where, entries, "a list of caption strings")
    return captions


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
        raise DatasetFileError(
            f"msvd: neither {' nor '.join(CAPTION_FILES)} found in {self.anno_dir}\nexpected layout:\n{self.layout}"
        )

    def required_files(self, split: str) -> list[str]:
        return [self.resolved_caption_file, f"{split}_list.txt"]

    @cached_property
    def captions(self) -> dict[str, list[str]]:
        path = self.annotation(self.resolved_caption_file)
        return load_raw_captions(path) if path.suffix == ".pkl" else load_caption_json(path)

    def parse_split(self, split: str) -> SplitRecords:
        list_file = self.annotation(f"{split}_list.txt")
        video_ids = read_id_list(list_file)
        missing = [video for video in video_ids if video not in self.captions]
        if missing:
            raise AnnotationError(
                f"msvd: {len(missing)} videos of {list_file} have no captions in {self.resolved_caption_file} (e.g. {missing[:3]})"
            )
        rows = [Row(video, caption) for video in video_ids for caption in self.captions[video]]
        return self.builder(split, info={"file": list_file.name}).build(rows)

    def variant(self) -> dict:
        return {"caption_file": self.resolved_caption_file}
