"""The built-in synthetic benchmark as a dataset source (generated on first use, see tvr.data.synthetic)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tvr.data.datasets.base import DatasetSource, register_dataset
from tvr.data.datasets.common import DatasetFileError, json_field, read_json
from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.data.synthetic import ANNOTATION_FILE, SyntheticConfig, ensure_synthetic_dataset
from tvr.errors import ConfigError


@register_dataset("synthetic")
class SyntheticDataset(DatasetSource):
    def __init__(self, root: str | Path, generate: bool = True, workers: int | None = None, **config) -> None:
        self.root = Path(root)
        self.generate = generate
        self.workers = workers
        self.config = SyntheticConfig(**config)

    def prepare(self, splits: tuple[str, ...] = ()) -> None:
        if self.generate:
            ensure_synthetic_dataset(self.root, self.config, workers=self.workers)
        else:
            self.annotation_file()

    def annotation_file(self) -> Path:
        path = self.root / ANNOTATION_FILE
        if not path.is_file():
            raise DatasetFileError(
                f"synthetic dataset not found: expected {path} and {self.root / 'videos'}/; "
                "set data.source.generate=true to build it"
            )
        return path

    def load_split(self, split: str) -> SplitRecords:
        path = self.annotation_file()
        annotations = read_json(
            path,
            "object",
            'an object {"splits": {"<split>": [{"video_id": ..., "video": ..., "caption": ...}]}}, '
            "as tvr writes it (delete the file and set data.source.generate=true to write it again)",
        )
        splits = json_field(path, "the top level", annotations, "splits", "object")
        if split not in splits:
            raise ConfigError(
                "data.splits", f"the synthetic dataset has no split '{split}'", f"valid: {', '.join(splits)}"
            )
        entries = json_field(path, '"splits"', splits, split, "array")
        videos, texts = [], []
        for index, entry in enumerate(entries):
            where = f'"splits" / "{split}" record {index}'
            video_id, video, caption = (
                json_field(path, where, entry, key, "string") for key in ("video_id", "video", "caption")
            )
            videos.append(VideoRef(video_id, self.root / video))
            texts.append(TextRef(index, video_id, caption))
        return SplitRecords(split, videos, texts)

    def describe(self) -> dict:
        return {"dataset": self.name, **{f"synthetic_{k}": v for k, v in asdict(self.config).items()}}
