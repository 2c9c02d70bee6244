"""DiDeMo paragraph-to-video retrieval (datasets spec §5).

A video's paragraph is its descriptions joined by spaces in JSON order; the clip is seconds 0-31 (the
annotated part). Videos are kept in the JSON's first-appearance order when they are also in the split's
list. Ids are Flickr file names (``...m4v``, some ending in a bare ``.``) and are never altered.
"""

from __future__ import annotations

import json

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row
from tvr.data.records import SplitRecords

CLIP_START, CLIP_END = 0.0, 31.0


@register_dataset("didemo")
class DiDeMo(FileDataset):
    layout = (
        "  <root>/{train,val,test}_data.json     annotation lists\n"
        "  <root>/{train,val,test}_list.txt      video file names per split\n"
        "  <root>/videos/<video file name>       named exactly as the id, or <id>.<ext>"
    )
    default_extension = ""

    def required_files(self, splits: tuple[str, ...]) -> list[str]:
        return [f"{split}_{kind}" for split in splits for kind in ("data.json", "list.txt")]

    def load_split(self, split: str) -> SplitRecords:
        if split not in ("train", "val", "test"):
            raise ValueError(f"didemo has splits train, val, test; got '{split}'")
        listed = {line.strip() for line in self.annotation(f"{split}_list.txt").read_text().splitlines() if line.strip()}
        annotations = json.loads(self.annotation(f"{split}_data.json").read_text())
        paragraphs: dict[str, list[str]] = {}
        for annotation in annotations:
            if annotation["video"] in listed:
                paragraphs.setdefault(annotation["video"], []).append(annotation["description"])
        rows = [Row(video, " ".join(sentences), CLIP_START, CLIP_END) for video, sentences in paragraphs.items()]
        info = {"file": f"{split}_data.json", "sentences": sum(len(s) for s in paragraphs.values())}
        return self.builder(split, info=info).build(rows)
