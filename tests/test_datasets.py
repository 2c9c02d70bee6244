"""Benchmark parsers on the real annotation files: the exact counts of the datasets spec (§8.2)."""

import json
import pickle
import shutil

import numpy as np
import pytest

from conftest import FIXTURES, SHARED
from tvr.data.datasets import create_dataset
from tvr.data.datasets.common import DatasetFileError
from tvr.data.datasets.lsmdc import DRL_EXCLUDED, XPOOL_EXCLUDED, movie_of
from tvr.errors import AnnotationError

ANNOTATIONS = FIXTURES / "annotations"
SYNTHESIZED = FIXTURES / "synthesized"
LSMDC_TEST = SHARED / "data" / "annotations" / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv"


def dataset_dir(tmp_path, name: str, extra: dict[str, str] | None = None):
    """A dataset folder holding the real annotation files (and synthesized ones where noted)."""
    root = tmp_path / name
    shutil.copytree(ANNOTATIONS / name, root) if (ANNOTATIONS / name).exists() else root.mkdir()
    for target, source in (extra or {}).items():
        shutil.copy(source, root / target)
    return root


def load(name: str, root, split: str, **options):
    return create_dataset(name, root=root, check_videos=False, **options).load_split(split)


# ---------------------------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_1k_a_is_square_with_1000_pairs(tmp_path):
    root = dataset_dir(tmp_path, "msrvtt")
    test = load("msrvtt", root, "test")
    assert len(test.texts) == len(test.videos) == 1000 and test.is_one_text_per_video
    assert (
        test.texts[0].caption == "a person is connecting something to system" and test.videos[0].video_id == "video9770"
    )
    assert all(v.video_id.startswith("video") for v in test.videos)
    assert [v.video_id for v in load("msrvtt", root, "val").videos] == [v.video_id for v in test.videos]


def test_msrvtt_split_facts_hold_on_the_real_csvs():
    from tvr.data.datasets.msrvtt import read_csv_column

    nine = read_csv_column(ANNOTATIONS / "msrvtt" / "MSRVTT_train.9k.csv", "video_id")
    seven = read_csv_column(ANNOTATIONS / "msrvtt" / "MSRVTT_train.7k.csv", "video_id")
    one_k = read_csv_column(ANNOTATIONS / "msrvtt" / "MSRVTT_JSFUSION_test.csv", "video_id")
    assert len(set(nine)) == 9000 and len(set(seven)) == 7010
    assert not set(nine) & set(one_k)
    assert set(nine) | set(one_k) == {f"video{i}" for i in range(10000)}
    assert set(seven) == {f"video{i}" for i in range(7010)}


@pytest.mark.parametrize("scheme, train_ids", [("9k", 5 + 1), ("7k", 2 + 1)])
def test_msrvtt_expanded_training_pairs_follow_json_order(tmp_path, scheme, train_ids):
    root = dataset_dir(tmp_path, "msrvtt", {"MSRVTT_data.json": SYNTHESIZED / "MSRVTT_data.json"})
    train = load("msrvtt", root, "train", split_scheme=scheme)
    sentences = json.loads((root / "MSRVTT_data.json").read_text())["sentences"]
    assert len(train.texts) == 20 * train_ids
    assert not {"video9770", "video7020"} & {v.video_id for v in train.videos}  # no 1k-A leak
    in_json_order = [s["caption"] for s in sentences if s["video_id"] in {v.video_id for v in train.videos}]
    assert [t.caption for t in train.texts] == in_json_order
    xpool = load("msrvtt", root, "train", split_scheme=scheme, pair_order="xpool")
    assert sorted(t.caption for t in xpool.texts) == sorted(in_json_order)
    assert [t.video_id for t in xpool.texts] == sorted(
        (t.video_id for t in xpool.texts), key=[v.video_id for v in xpool.videos].index
    )


def test_msrvtt_unexpanded_training_is_one_sample_per_video(tmp_path):
    from tvr.data.clips import TrainPairs

    root = dataset_dir(tmp_path, "msrvtt", {"MSRVTT_data.json": SYNTHESIZED / "MSRVTT_data.json"})
    train = load("msrvtt", root, "train", expand_sentences=False)
    assert train.info["train_unit"] == "video"
    pairs = TrainPairs(train, reader=None, tokenizer=None)
    assert len(pairs) == 6 and all(len(captions) == 20 for _, captions in pairs.items)


def test_msrvtt_official_split_uses_all_captions(tmp_path):
    root = dataset_dir(tmp_path, "msrvtt", {"MSRVTT_data.json": SYNTHESIZED / "MSRVTT_data.json"})
    test = load("msrvtt", root, "test", split_scheme="full")
    # of the synthesized json's videos, video7010, 7020, 8000, 9770 and 9999 are in the official test list
    assert len(test.videos) == 5 and len(test.texts) == 100 and not test.is_one_text_per_video


# ---------------------------------------------------------------------------------------------- MSVD
@pytest.fixture
def msvd_root(tmp_path):
    root = dataset_dir(tmp_path, "msvd")
    captions = json.loads((root / "captions_msvd.json").read_text())
    with open(tmp_path / "raw-captions.pkl", "wb") as handle:  # spec §3.5: the pickle is the JSON, tokenised
        pickle.dump({video: [caption.split(" ") for caption in caps] for video, caps in captions.items()}, handle)
    return root


@pytest.mark.parametrize("split, videos, texts", [("train", 1200, 48774), ("val", 100, 4290), ("test", 670, 27763)])
def test_msvd_counts(msvd_root, split, videos, texts):
    records = load("msvd", msvd_root, split)
    assert (len(records.videos), len(records.texts)) == (videos, texts)


def test_msvd_test_grouping_and_both_caption_files_agree(msvd_root, tmp_path):
    test = load("msvd", msvd_root, "test")
    text_to_video = np.array(test.text_to_video)
    cut_off_points = np.flatnonzero(np.diff(np.append(text_to_video, len(test.videos))))  # last caption of each video
    assert len(cut_off_points) == 670 and cut_off_points[-1] == 27762
    assert (np.diff(text_to_video) >= 0).all()  # captions ordered video by video
    shutil.copy(tmp_path / "raw-captions.pkl", msvd_root / "raw-captions.pkl")
    from_pickle = create_dataset("msvd", root=msvd_root, check_videos=False)
    assert from_pickle.resolved_caption_file == "raw-captions.pkl"  # CLIP4Clip's file wins when both exist
    pickled = from_pickle.load_split("test")
    assert [(t.video_id, t.caption) for t in pickled.texts] == [(t.video_id, t.caption) for t in test.texts]


def test_msvd_refuses_a_pickle_that_holds_code(msvd_root):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(msvd_root / "raw-captions.pkl", "wb") as handle:
        pickle.dump({"x": Payload()}, handle)
    with pytest.raises(
        AnnotationError,
        match="raw-captions.pkl: not a readable caption pickle .*may only hold dicts.*found builtins.print",
    ):
        load("msvd", msvd_root, "test", caption_file="raw-captions.pkl")


# ---------------------------------------------------------------------------------------------- LSMDC
@pytest.mark.skipif(
    not LSMDC_TEST.is_file(),
    reason="LSMDC's test file may not be redistributed; it is read from ../shared, absent here",
)
def test_lsmdc_public_test_file(tmp_path):
    root = tmp_path / "lsmdc"
    root.mkdir()
    shutil.copy(LSMDC_TEST, root)
    test = load("lsmdc", root, "test")
    assert len(test.texts) == len(test.videos) == 1000 and test.is_one_text_per_video
    assert len({movie_of(v.video_id) for v in test.videos}) == 17
    assert all(len(line.split("\t")) == 6 for line in LSMDC_TEST.read_text().splitlines())
    assert len(load("lsmdc", root, "test", exclude_clips=DRL_EXCLUDED).videos) == 999
    xpool = load("lsmdc", root, "test", exclude_clips=XPOOL_EXCLUDED, caption_dedup="last")
    assert len(xpool.videos) == 999


def test_lsmdc_training_lines_are_pairs_and_xpool_keeps_the_last_caption(tmp_path):
    root = tmp_path / "lsmdc"
    root.mkdir()
    for name in ("LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv"):
        shutil.copy(SYNTHESIZED / name, root)
    train = load("lsmdc", root, "train")
    assert len(train.texts) == 6 and len(train.videos) == 5  # one clip id has two sentences
    xpool = load("lsmdc", root, "train", caption_dedup="last")
    assert len(xpool.texts) == 5
    repeated = [t.caption for t in xpool.texts if t.video_id == "0001_Some_Movie_00.01.08.000-00.01.12.000"]
    assert repeated == ["She gets in and starts the engine."]
    assert movie_of("3001_RIVER_2049_02.10.00.000-02.10.04.500") == "3001_RIVER_2049"  # title with digits and _
    (root / "LSMDC16_annos_val.csv").write_text("clip\t00.00.01.000\tonly three fields\n")
    with pytest.raises(
        AnnotationError, match="LSMDC16_annos_val.csv: line 1: expected 6 tab-separated fields .*found 3"
    ):
        load("lsmdc", root, "val")


# ---------------------------------------------------------------------------------------------- DiDeMo
@pytest.mark.parametrize("split, paragraphs, sentences", [("test", 1004, 3932), ("val", 1065, 4109)])
def test_didemo_counts(tmp_path, split, paragraphs, sentences):
    records = load("didemo", dataset_dir(tmp_path, "didemo"), split)
    assert len(records.videos) == len(records.texts) == paragraphs and records.info["sentences"] == sentences
    assert all((v.start, v.end) == (0.0, 31.0) for v in records.videos)


def test_didemo_paragraph_and_ids_are_kept_verbatim(tmp_path):
    test = load("didemo", dataset_dir(tmp_path, "didemo"), "test")
    by_video = {t.video_id: t.caption for t in test.texts}
    assert by_video["26292851@N04_4253489686_265c3c8051.m4v"] == (
        "someone kicks the bug towards some rocks. a man in a red shirt stomps on a centipede. "
        "man in white shirt is seen close up of a millipede on the rocks first time foot swipes at wiggly thing"
    )
    dotted = [v.video_id for v in test.videos if v.video_id.endswith(".")]
    assert len(dotted) == 27  # ids ending in a bare "." survive untouched


def test_didemo_training_file_in_the_real_format(tmp_path):
    root = dataset_dir(tmp_path, "didemo", {"train_data.json": SYNTHESIZED / "didemo_train_data.json"})
    train = load("didemo", root, "train")
    assert len(train.videos) == 3  # the fourth video is not in train_list.txt
    assert {t.caption.count(".") for t in train.texts} == {2, 3}


# ---------------------------------------------------------------------------------------------- ActivityNet
@pytest.mark.parametrize("split, videos", [("train", 10009), ("val", 4917), ("test", 4917)])
def test_activitynet_counts(tmp_path, split, videos):
    records = load("activitynet", dataset_dir(tmp_path, "activitynet"), split)
    assert len(records.videos) == len(records.texts) == videos


def test_activitynet_paragraph_span_and_both_file_namings(tmp_path):
    root = dataset_dir(tmp_path, "activitynet")
    train = load("activitynet", root, "train")
    video = next(v for v in train.videos if v.video_id == "QOlSCBRmfWY")
    raw = json.loads((root / "train.json").read_text())["v_QOlSCBRmfWY"]
    assert next(t.caption for t in train.texts if t.video_id == "QOlSCBRmfWY") == " ".join(raw["sentences"])
    assert (video.start, video.end) == (0.0, 83.0)  # ceil(82.73)
    for file_name in ("QOlSCBRmfWY.mp4", "v_QOlSCBRmfWY.mkv"):
        videos = root / "videos"
        shutil.rmtree(videos, ignore_errors=True)
        videos.mkdir()
        (videos / file_name).write_bytes(b"\x00")
        found = create_dataset("activitynet", root=root).load_split("train")
        assert [v.path.name for v in found.videos] == [file_name]
        assert found.info["missing_videos"] == 10008


# ---------------------------------------------------------------------------------------------- files
def test_missing_files_name_the_file_and_the_layout(tmp_path):
    with pytest.raises(DatasetFileError, match="dataset folder not found") as error:
        create_dataset("msrvtt", root=tmp_path / "nowhere").prepare(("train", "test"))
    assert "MSRVTT_JSFUSION_test.csv" in str(error.value)
    root = dataset_dir(tmp_path, "msrvtt")
    with pytest.raises(DatasetFileError, match="MSRVTT_data.json"):
        create_dataset("msrvtt", root=root).prepare(("train", "test"))
    with pytest.raises(DatasetFileError, match="video folder not found"):
        create_dataset("msrvtt", root=root).prepare(("test",))


# dataset, options, the test split's files (name -> source), the files the train split needs in addition
TEST_SPLIT_ONLY = {
    "msrvtt": (
        "msrvtt",
        {},
        {"MSRVTT_JSFUSION_test.csv": ANNOTATIONS / "msrvtt"},
        ["MSRVTT_train.9k.csv", "MSRVTT_data.json"],
    ),
    "msrvtt_full": (
        "msrvtt",
        {"split_scheme": "full"},
        {"MSRVTT_test.full.csv": ANNOTATIONS / "msrvtt", "MSRVTT_data.json": SYNTHESIZED},
        ["MSRVTT_train.full.csv"],
    ),
    "msvd": (
        "msvd",
        {},
        {"captions_msvd.json": ANNOTATIONS / "msvd", "test_list.txt": ANNOTATIONS / "msvd"},
        ["train_list.txt"],
    ),
    "didemo": (
        "didemo",
        {},
        {"test_data.json": ANNOTATIONS / "didemo", "test_list.txt": ANNOTATIONS / "didemo"},
        ["train_data.json", "train_list.txt"],
    ),
    "activitynet": (
        "activitynet",
        {},
        {"val_1.json": ANNOTATIONS / "activitynet", "val_ids.json": ANNOTATIONS / "activitynet"},
        ["train.json", "train_ids.json"],
    ),
    "lsmdc": ("lsmdc", {}, {LSMDC_TEST.name: LSMDC_TEST.parent}, ["LSMDC16_annos_training.csv"]),
}


@pytest.mark.parametrize("name, options, test_files, train_files", TEST_SPLIT_ONLY.values(), ids=TEST_SPLIT_ONLY.keys())
def test_the_test_split_needs_only_its_own_files(tmp_path, name, options, test_files, train_files):
    if not all((folder / file).is_file() for file, folder in test_files.items()):
        pytest.skip("LSMDC's test file may not be redistributed; it is read from ../shared, absent here")
    root = tmp_path / name
    (root / "videos").mkdir(parents=True)
    for file, folder in test_files.items():
        shutil.copy(folder / file, root / file)
    listed = load(name, root, "test", **options).videos
    for video in listed[:3]:  # placeholder files: found by name, never opened here
        (root / "videos" / video.path.name).write_bytes(b"")
    dataset = create_dataset(name, root=root, **options)
    dataset.prepare(("test",))
    test = dataset.load_split("test")
    assert [v.video_id for v in test.videos] == [v.video_id for v in listed[:3]]
    assert test.info["missing_videos"] == len(listed) - 3 == len(test.info["missing_video_ids"])
    for ask_for_train in (lambda: dataset.prepare(("train", "test")), lambda: dataset.load_split("train")):
        with pytest.raises(AnnotationError, match="annotation files not found") as error:  # every missing file, at once
            ask_for_train()
        assert f"split 'train' needs {', '.join(train_files)}\n" in str(error.value)
        assert "split 'test'" not in str(error.value)


def test_videos_resolve_by_name_or_stem_and_missing_ones_are_counted(tmp_path):
    root = dataset_dir(tmp_path, "msvd")
    videos = root / "videos" / "YouTubeClips"
    videos.mkdir(parents=True)
    test_ids = [line.strip() for line in (root / "test_list.txt").read_text().splitlines() if line.strip()]
    for video_id in test_ids[:-2]:
        (videos / f"{video_id}.avi").write_bytes(b"\x00")
    records = create_dataset("msvd", root=root).load_split("test")
    assert len(records.videos) == 668 and records.info["missing_videos"] == 2
    assert records.videos[0].path == videos / f"{test_ids[0]}.avi"
    with pytest.raises(DatasetFileError, match="2 videos listed in the annotations have no file"):
        create_dataset("msvd", root=root, missing_video="error").load_split("test")


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "data, root_folder, test_texts, test_videos, max_frames",
    [
        ("msvd", "msvd", 27763, 670, 12),
        ("msrvtt", "msrvtt", 1000, 1000, 12),
        ("didemo", "didemo", 1004, 1004, 64),
        ("activitynet", "activitynet", 4917, 4917, 64),
    ],
)
def test_dataset_configs_need_only_the_root(data, root_folder, test_texts, test_videos, max_frames, tmp_path):
    from conftest import compose_train
    from tvr.builders import backbone_preprocessing, build_datamodule

    root = dataset_dir(tmp_path, root_folder)
    cfg = compose_train(
        [f"data={data}", f"data.source.root={root}", "data.source.check_videos=false"], tmp_path, tmp_path / "run"
    )
    datamodule = build_datamodule(cfg.data, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.setup("test")
    test = datamodule.records["test"]
    assert (len(test.texts), len(test.videos)) == (test_texts, test_videos)
    assert datamodule.eval_sampler.max_frames == max_frames and datamodule.tokenizer.max_words in (32, 64)
    described = datamodule.describe()
    assert described["dataset"] == data and described["missing_video"] == "drop"


def test_a_dataset_config_without_its_files_fails_at_start_up(tmp_path):
    from conftest import compose_train
    from tvr.builders import backbone_preprocessing, build_datamodule

    cfg = compose_train(["data=msvd", f"data.source.root={tmp_path / 'msvd'}"], tmp_path, tmp_path / "run")
    with pytest.raises(DatasetFileError, match="msvd: dataset folder not found") as error:
        build_datamodule(cfg.data, preprocessing=backbone_preprocessing(cfg.backbone)).prepare_data()
    assert "train_list.txt" in str(error.value)
