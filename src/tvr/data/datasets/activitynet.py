"""ActivityNet Captions paragraph-to-video retrieval (datasets spec §6).

Pseudo ids are iterated in the ids file's order; ``v_`` is stripped to get the video id; a video's
paragraph is its sentences joined by spaces; the clip is ``[0, ceil(duration)]``. ``val`` is val_1 and
is also the reported test set. Video files may be named with or without the ``v_`` prefix.
"""

from __future__ import annotations

import json
import math

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row
from tvr.data.records import SplitRecords

FILES = {"train": ("train.json", "train_ids.json"), "val": ("val_1.json", "val_ids.json"), "test": ("val_1.json", "val_ids.json")}
PREFIX = "v_"


@register_dataset("activitynet")
class ActivityNet(FileDataset):
    layout = (
        "  <root>/train.json, train_ids.json, val_1.json, val_ids.json   (captions.zip of ActivityNet Captions)\n"
        "  <root>/videos/<youtube id>.<ext> or v_<youtube id>.<ext>"
    )

    def required_files(self, splits: tuple[str, ...]) -> list[str]:
        return sorted({name for split in splits for name in FILES[split]})

    def load_split(self, split: str) -> SplitRecords:
        if split not in FILES:
            raise ValueError(f"activitynet has splits train, val, test (= val); got '{split}'")
        caption_file, ids_file = FILES[split]
        captions = json.loads(self.annotation(caption_file).read_text())
        pseudo_ids = json.loads(self.annotation(ids_file).read_text())
        rows = [
            Row(pid[len(PREFIX):], " ".join(captions[pid]["sentences"]), 0.0, float(math.ceil(captions[pid]["duration"])))
            for pid in pseudo_ids
            if pid in captions
        ]
        info = {"file": caption_file, "ids_without_captions": len(pseudo_ids) - len(rows)}
        return self.builder(split, alias_prefix=PREFIX, info=info).build(rows)
