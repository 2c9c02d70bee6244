"""Contract every registered dataset parser must honour, parametrised over the registry, on fixture files.

Each dataset names its fixture annotation files (tests/fixtures/annotations, synthesized/) in
``FIXTURES_OF``; a newly registered dataset fails here until it is given some (nothing is skipped).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES
from tvr.data.datasets import DATASETS, create_dataset
from tvr.data.datasets.common import DatasetFileError
from tvr.data.records import SplitRecords
from tvr.errors import ConfigError

ANNOTATIONS = FIXTURES / "annotations"
SYNTHESIZED = FIXTURES / "synthesized"


def annotation_folder(name: str, *synthesized: str):
    """Lays out the real annotation files of ``name`` (plus synthesized files) in a dataset root."""

    def lay_out(tmp_path: Path, request) -> Path:
        root = tmp_path / name
        shutil.copytree(ANNOTATIONS / name, root) if (ANNOTATIONS / name).is_dir() else root.mkdir(parents=True)
        for file in synthesized:
            shutil.copy(SYNTHESIZED / file, root / file.removeprefix(f"{name}_"))
        return root

    return lay_out


def generated_synthetic(tmp_path: Path, request) -> Path:
    return request.getfixturevalue("data_dir") / "synthetic"  # the session's small generated set


# dataset -> (lays out a root folder, constructor options, the splits its fixture files hold)
FIXTURES_OF = {
    "msrvtt": (annotation_folder("msrvtt", "MSRVTT_data.json"), {}, ("train", "val", "test")),
    "msvd": (annotation_folder("msvd"), {}, ("train", "val", "test")),
    "didemo": (annotation_folder("didemo", "didemo_train_data.json"), {}, ("train", "val", "test")),
    "activitynet": (annotation_folder("activitynet"), {}, ("train", "val", "test")),
    "lsmdc": (annotation_folder("lsmdc", "LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv"), {}, ("train", "val")),
    "synthetic": (generated_synthetic, {"generate": False}, ("train", "val", "test")),
}


def lay_out_dataset(name: str, tmp_path: Path, request):
    """(name, a root holding the dataset's fixture files, constructor options, the splits those files hold)."""
    assert name in FIXTURES_OF, (
        f"dataset '{name}' has no fixture files: add annotation files and an entry to FIXTURES_OF"
    )
    lay_out, options, splits = FIXTURES_OF[name]
    if name != "synthetic":
        options = {"check_videos": False, **options}  # parsing needs no videos
    return name, lay_out(tmp_path, request), options, splits


@pytest.fixture(params=DATASETS.names())
def dataset(request, tmp_path):
    return lay_out_dataset(request.param, tmp_path, request)


def test_prepare_finds_the_files_and_describe_is_a_record(dataset):
    name, root, options, splits = dataset
    source = create_dataset(name, root=root, **options)
    source.prepare(splits)
    described = source.describe()
    assert described["dataset"] == name == source.name
    assert json.loads(json.dumps(described)) == described, "describe() is written into metrics.json"


def test_every_split_holds_videos_with_ids_and_paths_and_captions(dataset):
    name, root, options, splits = dataset
    source = create_dataset(name, root=root, **options)
    for split in splits:
        records = source.load_split(split)
        assert isinstance(records, SplitRecords) and records.name == split
        assert records.videos and records.texts, f"{name} {split} is empty"
        for video in records.videos:
            assert isinstance(video.video_id, str) and video.video_id, f"{video}: ids are non-empty strings"
            assert isinstance(video.path, Path)
            if video.start is not None:
                assert 0 <= video.start and (video.end is None or video.start < video.end), (
                    f"{video}: a span runs forward"
                )
        assert len({text.text_id for text in records.texts}) == len(records.texts), "text ids are unique"
        assert all(isinstance(text.caption, str) and text.caption.strip() for text in records.texts), (
            "captions are non-empty"
        )
        captioned = {text.video_id for text in records.texts}
        assert captioned == {video.video_id for video in records.videos}, "every listed video has a caption"


def test_parsing_is_deterministic(dataset):
    name, root, options, splits = dataset
    for split in splits:
        first, second = (create_dataset(name, root=root, **options).load_split(split) for _ in range(2))
        assert (first.videos, first.texts) == (second.videos, second.texts)


def test_an_unknown_split_is_a_config_error(dataset):
    name, root, options, _ = dataset
    with pytest.raises(ConfigError) as error:
        create_dataset(name, root=root, **options).load_split("no_such_split")
    assert error.value.key == "data.splits"


def test_a_folder_without_the_files_says_what_is_missing(dataset, tmp_path):
    name, _, options, splits = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFileError, match=str(empty)):
        create_dataset(name, root=empty, **options).prepare(splits)


# Prints a digest of every split's records; run in processes with different string-hash seeds.
DIGEST = """
import hashlib, json, sys
from tvr.data.datasets import create_dataset
for name, root, options, splits in json.loads(sys.argv[1]):
    for split in splits:
        records = create_dataset(name, root=root, **options).load_split(split)
        print(name, split, hashlib.sha256(repr((records.videos, records.texts)).encode()).hexdigest())
"""


@pytest.mark.slow
def test_records_do_not_depend_on_the_hash_seed(request, tmp_path):
    """Iterating a set of strings changes order from one process to the next; the records must not."""
    plan = []
    for name in DATASETS.names():  # every dataset in one pair of processes
        name, root, options, splits = lay_out_dataset(name, tmp_path / name, request)
        plan.append((name, str(root), options, splits))
    digests = [
        subprocess.run(
            [sys.executable, "-c", DIGEST, json.dumps(plan)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert digests[0].count("\n") == sum(len(splits) for *_, splits in plan)
    assert digests[0] == digests[1]
