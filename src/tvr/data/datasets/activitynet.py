"""ActivityNet Captions paragraph-to-video retrieval (datasets spec §6).

Pseudo ids are iterated in the ids file's order; ``v_`` is stripped to get the video id; a video's
paragraph is its sentences joined by spaces; the clip is ``[0, ceil(duration)]``. ``val`` is val_1 and
is also the reported test set. Video files may be named with or without the ``v_`` prefix.
"""

from __future__ import annotations

import math

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row, json_field, read_json, require_strings
from tvr.data.records import SplitRecords
from tvr.errors import AnnotationError

FILES = {
    "train": ("train.json", "train_ids.json"),
    "val": ("val_1.json", "val_ids.json"),
    "test": ("val_1.json", "val_ids.json"),
}
PREFIX = "v_"


@register_dataset("activitynet")
class ActivityNet(FileDataset):
    layout = (
        "  <root>/train.json, train_ids.json, val_1.json, val_ids.json   (captions.zip of ActivityNet Captions)\n"
        "  <root>/videos/<youtube id>.<ext> or v_<youtube id>.<ext>"
    )

    def required_files(self, split: str) -> list[str]:
        return list(FILES[split])

    def parse_split(self, split: str) -> SplitRecords:
        caption_file, ids_file = FILES[split]
        caption_path, ids_path = self.annotation(caption_file), self.annotation(ids_file)
        captions = read_json(
            caption_path, "object", 'an object {"v_<youtube id>": {"duration": ..., "sentences": [...]}}'
        )
        pseudo_ids = require_strings(
            ids_path, "the top level", read_json(ids_path, "array", 'an array of "v_<youtube id>" strings')
        )
        rows = []
        for index, pseudo_id in enumerate(pseudo_ids):
            if not pseudo_id.startswith(PREFIX):  # stripping two characters of another id would name a wrong video
                raise AnnotationError(
                    f'{ids_path}: item {index} is "{pseudo_id}"; expected an id starting with "{PREFIX}"'
                )
            if pseudo_id not in captions:
                continue
            where = f'key "{pseudo_id}"'
            sentences = require_strings(
                caption_path,
                f'{where}, "sentences"',
                json_field(caption_path, where, captions[pseudo_id], "sentences", "array"),
            )
            duration = json_field(caption_path, where, captions[pseudo_id], "duration", "number")
            if not 0 <= duration < math.inf:  # NaN fails too; the clip is [0, ceil(duration)]
                raise AnnotationError(
                    f'{caption_path}: {where}: "duration" is {duration}; expected a length in seconds'
                )
            rows.append(Row(pseudo_id[len(PREFIX) :], " ".join(sentences), 0.0, float(math.ceil(duration))))
        info = {"file": caption_file, "ids_without_captions": len(pseudo_ids) - len(rows)}
        return self.builder(split, alias_prefix=PREFIX, info=info).build(rows)
