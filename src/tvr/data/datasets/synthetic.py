"""The built-in synthetic benchmark as a dataset source (generated on first use, see tvr.data.synthetic)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tvr.data.datasets.base import DatasetSource, register_dataset
from tvr.data.records import SplitRecords, TextRef, VideoRef
from tvr.data.synthetic import ANNOTATION_FILE, SyntheticConfig, ensure_synthetic_dataset


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
        elif not (self.root / ANNOTATION_FILE).is_file():
            raise FileNotFoundError(
                f"synthetic dataset not found: expected {self.root / ANNOTATION_FILE} and {self.root / 'videos'}/; "
                "set data.source.generate=true to build it"
            )

    def load_split(self, split: str) -> SplitRecords:
        annotations = json.loads((self.root / ANNOTATION_FILE).read_text())
        if split not in annotations["splits"]:
            raise ValueError(f"synthetic dataset has no split '{split}'; valid: {', '.join(annotations['splits'])}")
        entries = annotations["splits"][split]
        videos = [VideoRef(e["video_id"], self.root / e["video"]) for e in entries]
        texts = [TextRef(i, e["video_id"], e["caption"]) for i, e in enumerate(entries)]
        return SplitRecords(split, videos, texts)

    def describe(self) -> dict:
        return {"dataset": self.name, **{f"synthetic_{k}": v for k, v in asdict(self.config).items()}}
