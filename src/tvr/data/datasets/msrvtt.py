"""MSR-VTT (datasets spec §2): 9k / 7k / official training splits, the 1k-A (JSFusion) test set.

Splits: ``train``; ``test`` (1k-A by default, one sentence per video, square matrix); ``val``, which is
the same set as ``test`` in the CLIP4Clip protocol (it has no separate validation set). With
``split_scheme: full`` the official 6,513 / 497 / 2,990 split is used and val/test carry all 20 captions
per video (multi-caption protocol).
"""

from __future__ import annotations

from functools import cached_property

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row, json_field, read_csv_columns, read_json
from tvr.data.records import SplitRecords

SCHEMES = {
    "9k": {"train": "MSRVTT_train.9k.csv"},
    "7k": {"train": "MSRVTT_train.7k.csv"},
    "full": {"train": "MSRVTT_train.full.csv", "val": "MSRVTT_val.full.csv", "test": "MSRVTT_test.full.csv"},
}
PAIR_ORDERS = ("clip4clip", "xpool")


def read_csv_column(path, column: str) -> list[str]:
    return [row[column] for row in read_csv_columns(path, (column,))]


@register_dataset("msrvtt")
class MSRVTT(FileDataset):
    layout = (
        "  <root>/MSRVTT_data.json               captions of all 10,000 videos (train)\n"
        "  <root>/MSRVTT_train.9k.csv | MSRVTT_train.7k.csv | MSRVTT_{train,val,test}.full.csv\n"
        "  <root>/MSRVTT_JSFUSION_test.csv       the 1k-A test set\n"
        "  <root>/videos/video<N>.mp4            (any extension; data.source.video_dir to move it)"
    )

    def __init__(
        self,
        root,
        split_scheme: str = "9k",
        expand_sentences: bool = True,
        pair_order: str = "clip4clip",
        data_json: str = "MSRVTT_data.json",
        test_csv: str = "MSRVTT_JSFUSION_test.csv",
        **common,
    ) -> None:
        super().__init__(root, **common)
        if split_scheme not in SCHEMES:
            raise ValueError(f"msrvtt split_scheme must be one of {', '.join(SCHEMES)}, got '{split_scheme}'")
        if pair_order not in PAIR_ORDERS:
            raise ValueError(f"msrvtt pair_order must be one of {', '.join(PAIR_ORDERS)}, got '{pair_order}'")
        self.split_scheme = split_scheme
        self.expand_sentences = expand_sentences
        self.pair_order = pair_order
        self.data_json = data_json
        self.test_csv = test_csv

    def required_files(self, split: str) -> list[str]:
        if split in SCHEMES[self.split_scheme]:  # a video list whose captions are in the JSON
            return [SCHEMES[self.split_scheme][split], self.data_json]
        return [self.test_csv]  # 1k-A: ids and sentences in one csv

    @cached_property
    def sentences(self) -> list[tuple[str, str]]:
        """``MSRVTT_data.json``'s (video_id, caption) sentences in file order (nothing else is read)."""
        path = self.annotation(self.data_json)
        data = read_json(path, "object", 'an object with "sentences": [{"video_id": ..., "caption": ...}, ...]')
        records = json_field(path, "the top level", data, "sentences", "array")
        return [
            (
                json_field(path, f'"sentences" record {index}', record, "video_id", "string"),
                json_field(path, f'"sentences" record {index}', record, "caption", "string"),
            )
            for index, record in enumerate(records)
        ]

    def parse_split(self, split: str) -> SplitRecords:
        if split == "train":
            return self._train()
        if self.split_scheme == "full":
            return self._all_captions(split, SCHEMES["full"][split])
        path = self.annotation(self.test_csv)
        rows = [Row(row["video_id"], row["sentence"]) for row in read_csv_columns(path, ("video_id", "sentence"))]
        return self.builder(split, info={"file": path.name, "note": "val = test = 1k-A, as CLIP4Clip"}).build(rows)

    def _train(self) -> SplitRecords:
        csv_name = SCHEMES[self.split_scheme]["train"]
        video_ids = read_csv_column(self.annotation(csv_name), "video_id")
        wanted = set(video_ids)
        if self.pair_order == "clip4clip":  # every sentence of a training video, in JSON order
            rows = [Row(video, caption) for video, caption in self.sentences if video in wanted]
        else:  # X-Pool: video by video in csv order, each video's captions in JSON order
            rows = self._rows_by_video(video_ids)
        unit = "pair" if self.expand_sentences else "video"
        return self.builder("train", info={"file": csv_name}).build(rows, train_unit=unit)

    def _all_captions(self, split: str, csv_name: str) -> SplitRecords:
        rows = self._rows_by_video(read_csv_column(self.annotation(csv_name), "video_id"))
        return self.builder(split, info={"file": csv_name}).build(rows)

    @cached_property
    def captions_by_video(self) -> dict[str, list[str]]:
        """Each video's captions in JSON order."""
        by_video: dict[str, list[str]] = {}
        for video, caption in self.sentences:
            by_video.setdefault(video, []).append(caption)
        return by_video

    def _rows_by_video(self, video_ids: list[str]) -> list[Row]:
        """Video by video in the given order, each video's captions in JSON order."""
        return [Row(video, caption) for video in video_ids for caption in self.captions_by_video.get(video, [])]

    def variant(self) -> dict:
        return {
            "split_scheme": self.split_scheme,
            "expand_sentences": self.expand_sentences,
            "pair_order": self.pair_order,
            "test_file": self.test_csv if self.split_scheme != "full" else SCHEMES["full"]["test"],
        }
