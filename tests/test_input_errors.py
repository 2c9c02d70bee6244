"""Bad input files fail with an error naming the file and the line, key or record, and what was expected:
annotation files of every dataset parser, and checkpoint files (missing, empty, damaged, or not tvr's)."""

import inspect
import json
import pickle
import zipfile

import pytest
import torch

from tvr.checkpoint import TVR_HYPER_PARAMETERS, load_checkpoint_file, load_tvr_checkpoint
from tvr.data.datasets import create_dataset
from tvr.errors import AnnotationError, CheckpointError, UserInputError
from tvr.lit_module import RetrievalModule

LSMDC_LINE = "1012_Unbreakable_00.56.36.981-00.56.38.167\t00.56.36.981\t00.56.38.167\t00.56.36.574\t00.56.38.574\tSOMEONE pulls out his walkie-talkie."
MSRVTT_DATA = {"sentences": [{"video_id": "video9770", "caption": "a person is cooking", "sen_id": 0}]}
ACTIVITYNET_ENTRY = {"duration": 82.73, "timestamps": [[0.83, 19.86]], "sentences": ["A woman dances."]}
DIDEMO_RECORD = {"video": "a@N01_1_x.mov", "description": "a dog runs", "times": [[0, 0]], "annotation_id": 1}


# (dataset, options, split, {file: content}, message): each case breaks one file of an otherwise valid split
CASES = {
    "msrvtt: test csv without the video_id column": (
        "msrvtt",
        {},
        "test",
        {"MSRVTT_JSFUSION_test.csv": "key,vid,sentence\nret0,video9770,a man cooks\n"},
        r"MSRVTT_JSFUSION_test.csv: line 1: no column video_id in the header \(key,vid,sentence\); expected a comma-separated file",
    ),
    "msrvtt: test csv row without a sentence": (
        "msrvtt",
        {},
        "test",
        {"MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id,sentence\nret0,msr1,video1,a man\nret1,msr2,video2\n"},
        r"MSRVTT_JSFUSION_test.csv: line 3: no value for sentence; expected 4 comma-separated fields",
    ),
    "msrvtt: empty train csv": (
        "msrvtt",
        {},
        "train",
        {"MSRVTT_train.9k.csv": "", "MSRVTT_data.json": json.dumps(MSRVTT_DATA)},
        r"MSRVTT_train.9k.csv: the file is empty; expected a comma-separated file whose first line names the columns video_id",
    ),
    "msrvtt: malformed data json": (
        "msrvtt",
        {},
        "train",
        {
            "MSRVTT_train.9k.csv": "video_id\nvideo0\n",
            "MSRVTT_data.json": '{"sentences": [\n  {"video_id": "video0",}\n]}',
        },
        r"MSRVTT_data.json: line 2, column 25: invalid JSON \(Expecting property name",
    ),
    "msrvtt: sentence without a caption": (
        "msrvtt",
        {},
        "train",
        {
            "MSRVTT_train.9k.csv": "video_id\nvideo0\n",
            "MSRVTT_data.json": json.dumps(
                {"sentences": [{"video_id": "video0", "caption": "x"}, {"video_id": "video0"}]}
            ),
        },
        r'MSRVTT_data.json: "sentences" record 1 has no "caption" \(it has "video_id"\); expected "caption" to be a string',
    ),
    "msvd: caption json with a number for a caption": (
        "msvd",
        {},
        "test",
        {"captions_msvd.json": json.dumps({"vid_1_2": ["a cat", 7]}), "test_list.txt": "vid_1_2\n"},
        r'captions_msvd.json: key "vid_1_2", item 1 is a number; expected a list of caption strings',
    ),
    "msvd: truncated caption pickle": (
        "msvd",
        {"caption_file": "raw-captions.pkl"},
        "test",
        {"raw-captions.pkl": pickle.dumps({"vid": [["a", "cat"]]})[:9], "test_list.txt": "vid\n"},
        r"raw-captions.pkl: not a readable caption pickle \(UnpicklingError: pickle data was truncated\)",
    ),
    "msvd: caption pickle with a string caption": (
        "msvd",
        {"caption_file": "raw-captions.pkl"},
        "test",
        {"raw-captions.pkl": pickle.dumps({"vid": [["a", "cat"], "a dog"]}), "test_list.txt": "vid\n"},
        r'raw-captions.pkl: key "vid", caption 1 is a string; expected a list of word strings',
    ),
    "lsmdc: a header line": (
        "lsmdc",
        {},
        "test",
        {"LSMDC16_challenge_1000_publictect.csv": "clip_id\tstart\tend\tstart\tend\tsentence\n" + LSMDC_LINE + "\n"},
        r"LSMDC16_challenge_1000_publictect.csv: line 1: the first field 'clip_id' is not a clip id",
    ),
    "lsmdc: bytes that are not UTF-8": (
        "lsmdc",
        {},
        "test",
        {"LSMDC16_challenge_1000_publictect.csv": (LSMDC_LINE + "\n" + LSMDC_LINE + " caf\xe9\n").encode("latin-1")},
        r"LSMDC16_challenge_1000_publictect.csv: line 2: byte \d+ is not UTF-8 text",
    ),
    "didemo: a record without a description": (
        "didemo",
        {},
        "test",
        {"test_list.txt": "a@N01_1_x.mov\n", "test_data.json": json.dumps([DIDEMO_RECORD, {"video": "a@N01_1_x.mov"}])},
        r'test_data.json: record 1 has no "description" \(it has "video"\)',
    ),
    "didemo: an object instead of a list of records": (
        "didemo",
        {},
        "test",
        {"test_list.txt": "a@N01_1_x.mov\n", "test_data.json": json.dumps({"a@N01_1_x.mov": DIDEMO_RECORD})},
        r"test_data.json: the top level is an object; expected an array of annotations",
    ),
    "activitynet: an entry without its duration": (
        "activitynet",
        {},
        "test",
        {
            "val_ids.json": '["v_QOlSCBRmfWY"]',
            "val_1.json": json.dumps({"v_QOlSCBRmfWY": {"sentences": ["A woman dances."]}}),
        },
        r'val_1.json: key "v_QOlSCBRmfWY" has no "duration" \(it has "sentences"\); expected "duration" to be a number',
    ),
    "activitynet: sentences that are not strings": (
        "activitynet",
        {},
        "test",
        {
            "val_ids.json": '["v_QOlSCBRmfWY"]',
            "val_1.json": json.dumps({"v_QOlSCBRmfWY": {**ACTIVITYNET_ENTRY, "sentences": [["A", "woman"]]}}),
        },
        r'val_1.json: key "v_QOlSCBRmfWY", "sentences", item 0 is an array; expected a list of strings',
    ),
    "activitynet: a negative duration": (
        "activitynet",
        {},
        "test",
        {
            "val_ids.json": '["v_QOlSCBRmfWY"]',
            "val_1.json": json.dumps({"v_QOlSCBRmfWY": {**ACTIVITYNET_ENTRY, "duration": -1}}),
        },
        r'val_1.json: key "v_QOlSCBRmfWY": "duration" is -1; expected a length in seconds',
    ),
    "activitynet: an id without v_": (
        "activitynet",
        {},
        "test",
        {
            "val_ids.json": '["v_QOlSCBRmfWY", "QOlSCBRmfWY"]',
            "val_1.json": json.dumps({"v_QOlSCBRmfWY": ACTIVITYNET_ENTRY}),
        },
        r'val_ids.json: item 1 is "QOlSCBRmfWY"; expected an id starting with "v_"',
    ),
    "synthetic: malformed annotations": (
        "synthetic",
        {"generate": False},
        "test",
        {"annotations.json": '{"splits": {"test": [\n{"video_id": "s0"\n]}}'},
        r"annotations.json: line 3, column 1: invalid JSON",
    ),
}


@pytest.mark.parametrize("dataset, options, split, files, message", CASES.values(), ids=CASES.keys())
def test_malformed_annotations_name_the_file_and_where(tmp_path, dataset, options, split, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    no_videos = {} if dataset == "synthetic" else {"check_videos": False}  # the synthetic source has no such switch
    with pytest.raises(AnnotationError, match=message):
        create_dataset(dataset, root=tmp_path, **no_videos, **options).load_split(split)


def test_a_split_without_any_pair_or_video_is_refused(tmp_path):
    (tmp_path / "test_list.txt").write_text("b@N01_2_y.mov\n")  # not the video of the records
    (tmp_path / "test_data.json").write_text(json.dumps([DIDEMO_RECORD]))
    with pytest.raises(
        AnnotationError, match=r"didemo test: the annotation files \(test_data.json\) give no \(video, caption\) pair"
    ):
        create_dataset("didemo", root=tmp_path, check_videos=False).load_split("test")
    (tmp_path / "test_list.txt").write_text("a@N01_1_x.mov\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(
        AnnotationError,
        match=r"1 videos listed in the annotations have no file .*none has; check data.source.video_dir",
    ):
        create_dataset("didemo", root=tmp_path).load_split("test")  # otherwise an empty split is evaluated


# ---------------------------------------------------------------------------------------------- checkpoints
def save(path, value):
    torch.save(value, path)
    return path


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def tvr_checkpoint() -> dict:
    return {
        "state_dict": {"backbone.clip.logit_scale": torch.zeros(())},
        "epoch": 1,
        "hyper_parameters": {key: {"name": "meanpool"} for key in (*TVR_HYPER_PARAMETERS, "evaluation", "run_config")},
    }


def test_the_checked_hyper_parameters_are_those_the_module_saves():
    assert set(TVR_HYPER_PARAMETERS) <= set(inspect.signature(RetrievalModule.__init__).parameters)


def test_a_tvr_checkpoint_loads(tmp_path):
    checkpoint = load_tvr_checkpoint(save(tmp_path / "best.ckpt", tvr_checkpoint()))
    assert set(checkpoint["hyper_parameters"]) >= set(TVR_HYPER_PARAMETERS) and "state_dict" in checkpoint


def torchscript_file(path):
    with zipfile.ZipFile(path, "w") as archive:  # the layout torch.jit.save writes (only the names are inspected)
        archive.writestr("ViT-B-32/constants.pkl", b"")
        archive.writestr("ViT-B-32/code/__torch__/model.py", "")
    return path


def truncated(path):
    data = save(path, tvr_checkpoint()).read_bytes()
    return written(path, data[: len(data) // 2])


def safetensors_file(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


NOT_TVR = {
    "missing": (lambda p: p, r"best.ckpt' not found; pass a checkpoint written by tvr-train"),
    "empty": (lambda p: written(p, b""), r"best.ckpt' is empty \(0 bytes"),
    "a run folder": (
        lambda p: (
            (p / "checkpoints").mkdir(parents=True) or written(p / "checkpoints" / "last.ckpt", b"x").parent.parent
        ),
        r"best.ckpt' is a folder, not a file \(files in it: .*checkpoints/last.ckpt\); pass a checkpoint",
    ),
    "truncated": (
        truncated,
        r"best.ckpt' with torch.load\(weights_only=True\): it is truncated, damaged or not a torch file",
    ),
    "text": (lambda p: written(p, b"hello"), r"it is truncated, damaged or not a torch file"),
    "python objects": (
        lambda p: save(p, {"state_dict": {}, "object": RetrievalModule}),
        r"pickled Python object \(tvr.lit_module.RetrievalModule\)",
    ),
    "CLIP4Clip release": (
        lambda p: save(
            p, {"clip.visual.proj": torch.zeros(2), "transformerClip.resblocks.0.ln_1.weight": torch.zeros(2)}
        ),
        r"released with a paper .*python tools/convert_checkpoint.py <file> out.ckpt experiment=<recipe>",
    ),
    "X-Pool release": (
        lambda p: save(
            p, {"epoch": 3, "state_dict": {"module.clip.text_model.x": torch.zeros(1)}, "optimizer": {"lr": 1e-4}}
        ),
        r"released with a paper",
    ),
    "open_clip weights": (
        lambda p: save(
            p, {"state_dict": {"visual.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)}}
        ),
        r"CLIP weights, not a trained retrieval model: pass them to tvr-train as backbone.weights=<file>",
    ),
    "Hugging Face weights": (
        lambda p: safetensors_file(
            p.with_suffix(".safetensors"), {"text_model.embeddings.token_embedding.weight": torch.zeros(1)}
        ),
        r"best.safetensors' is not a tvr checkpoint: it holds CLIP weights",
    ),
    "OpenAI TorchScript": (torchscript_file, r"it is OpenAI's TorchScript CLIP weights"),
    "bare tvr state_dict": (
        lambda p: save(p, tvr_checkpoint()["state_dict"]),
        r"tvr model weights without the configuration",
    ),
    "another Lightning model": (
        lambda p: save(p, {"state_dict": {"encoder.w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}),
        r"its hyper_parameters lack backbone, head, loss, optim, train \(it has lr\)",
    ),
    "not a dictionary": (lambda p: save(p, [torch.zeros(1)]), r"it holds a list, not a checkpoint dictionary"),
}


@pytest.mark.parametrize("make, message", NOT_TVR.values(), ids=NOT_TVR.keys())
def test_a_file_that_is_not_a_tvr_checkpoint_says_what_it_is(tmp_path, make, message):
    path = make(tmp_path / "best.ckpt")
    with pytest.raises(CheckpointError, match=message) as error:
        load_tvr_checkpoint(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text"])
def test_unreadable_checkpoint_files_are_user_errors_naming_the_file(tmp_path, kind):
    path = NOT_TVR[kind][0](tmp_path / "best.ckpt")
    with pytest.raises(
        UserInputError, match=NOT_TVR[kind][1]
    ):  # today: FileNotFoundError, EOFError, RuntimeError, KeyError
        load_checkpoint_file(path)
