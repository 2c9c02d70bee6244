"""DiDeMo paragraph-to-video retrieval (datasets spec §5).

A video's paragraph is its descriptions joined by spaces in JSON order; the clip is seconds 0-31 (the
annotated part). Videos are kept in the JSON's first-appearance order when they are also in the split's
list. Ids are Flickr file names (``...m4v``, some ending in a bare ``.``) and are never altered.
"""

from __future__ import annotations

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row, json_field, read_id_list, read_json
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

    def required_files(self, split: str) -> list[str]:
        return [f"{split}_data.json", f"{split}_list.txt"]

    def parse_split(self, split: str) -> SplitRecords:
        listed = set(read_id_list(self.annotation(f"{split}_list.txt")))
        data_path = self.annotation(f"{split}_data.json")
        annotations = read_json(data_path, "array", 'an array of annotations {"video": ..., "description": ..., ...}')
        paragraphs: dict[str, list[str]] = {}
        for index, annotation in enumerate(annotations):
            video = json_field(data_path, f"record {index}", annotation, "video", "string")
            description = json_field(data_path, f"record {index}", annotation, "description", "string")
            if video in listed:
                paragraphs.setdefault(video, []).append(description)
        rows = [Row(video, " ".join(sentences), CLIP_START, CLIP_END) for video, sentences in paragraphs.items()]
        info = {"file": f"{split}_data.json", "sentences": sum(len(s) for s in paragraphs.values())}
        return self.builder(split, info=info).build(rows)
