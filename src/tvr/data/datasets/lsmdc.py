"""LSMDC 2016 retrieval (datasets spec §4): tab-separated, 6 fields, no header.

``<CLIP_ID> <START_ALIGNED> <END_ALIGNED> <START_EXTRACTED> <END_EXTRACTED> <SENTENCE>``. Every line is
one pair (CLIP4Clip); ``caption_dedup: last`` keeps only the last sentence of a repeated clip id
(X-Pool's dict). ``exclude_clips`` drops clips by id (X-Pool skips one broken test clip, DRL three).
Videos may sit in per-movie folders (``<movie>/<clip_id>.avi``) or flat; the folder is walked.
"""

from __future__ import annotations

import re

from tvr.data.datasets.base import FileDataset, register_dataset
from tvr.data.datasets.common import Row, read_lines
from tvr.data.records import SplitRecords
from tvr.errors import AnnotationError

FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
DEDUP_MODES = ("none", "last")
CLIP_ID = re.compile(r"^(?P<movie>\d{4}_.+)_(?P<start>\d\d\.\d\d\.\d\d\.\d{3})-(?P<end>\d\d\.\d\d\.\d\d\.\d{3})$")
CLIP_ID_FORMAT = "<4 digits>_<title>_<hh.mm.ss.mmm>-<hh.mm.ss.mmm>"
XPOOL_EXCLUDED = ("1012_Unbreakable_00.05.16.065-00.05.21.941",)
DRL_EXCLUDED = (
    "0017_Pianist_00.23.28.872-00.23.34.843",
    "0017_Pianist_00.30.36.767-00.30.38.009",
    "3064_SPARKLE_2012_01.41.07.000-01.41.11.793",
)


def movie_of(clip_id: str) -> str:
    """``1012_Unbreakable_00.56.36.981-00.56.38.167`` -> ``1012_Unbreakable`` (the per-movie folder)."""
    match = CLIP_ID.match(clip_id)
    if not match:
        raise ValueError(f"'{clip_id}' is not an LSMDC clip id ({CLIP_ID_FORMAT})")
    return match["movie"]


def parse_lsmdc_file(path) -> list[tuple[str, str]]:
    """(clip_id, sentence) per line, in file order; a line without exactly 6 fields, or whose first field
    is not a clip id (e.g. a header line, or columns in another order), is an error."""
    pairs = []
    for number, line in read_lines(path):
        fields = line.split("\t")
        if len(fields) != 6:
            raise AnnotationError(
                f"{path}: line {number}: expected 6 tab-separated fields "
                f"(clip id, 4 time stamps, sentence), found {len(fields)}"
            )
        if not CLIP_ID.match(fields[0]):
            raise AnnotationError(
                f"{path}: line {number}: the first field '{fields[0]}' is not a clip id ({CLIP_ID_FORMAT})"
            )
        pairs.append((fields[0], fields[5]))
    return pairs


@register_dataset("lsmdc")
class LSMDC(FileDataset):
    layout = (
        "  <root>/LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv\n"
        "  <root>/videos/<movie>/<clip_id>.avi    (or a flat folder of <clip_id>.<ext>)"
    )
    default_extension = ".avi"

    def __init__(
        self, root, caption_dedup: str = "none", exclude_clips: list[str] | tuple[str, ...] = (), **common
    ) -> None:
        super().__init__(root, **common)
        if caption_dedup not in DEDUP_MODES:
            raise ValueError(f"lsmdc caption_dedup must be one of {', '.join(DEDUP_MODES)}, got '{caption_dedup}'")
        self.caption_dedup = caption_dedup
        self.exclude_clips = tuple(exclude_clips)

    def required_files(self, split: str) -> list[str]:
        return [FILES[split]]

    def parse_split(self, split: str) -> SplitRecords:
        pairs = parse_lsmdc_file(self.annotation(FILES[split]))
        excluded = set(self.exclude_clips)
        kept = [(clip, sentence) for clip, sentence in pairs if clip not in excluded]
        info = {"file": FILES[split], "lines": len(pairs), "excluded": len(pairs) - len(kept)}
        if self.caption_dedup == "last":
            last = dict(kept)  # a dict keeps the first position and the last value, as X-Pool's does
            kept = list(last.items())
        rows = [Row(clip, sentence) for clip, sentence in kept]
        return self.builder(split, info=info).build(rows)

    def variant(self) -> dict:
        return {"caption_dedup": self.caption_dedup, "exclude_clips": list(self.exclude_clips)}
