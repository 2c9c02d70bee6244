"""tools/bench_loader.py: per-worker rates from tvr's own training loader, and start-up at real scale reading each
annotation file once; the loaders deliver uint8 clips that the model normalises to what the CPU gave before."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train, run_tool
from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.data.clips import ClipReader
from tvr.data.transforms import ClipFrameTransform, normalize_frames

ANNOTATIONS = REPO_ROOT.parent / "shared" / "data" / "annotations"


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_loader", REPO_ROOT / "tools" / "bench_loader.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason="the real annotation files (../shared) are not here")
@pytest.mark.parametrize("dataset, fraction", [("msrvtt", 0.02), ("activitynet", 0.05)])
def test_start_up_reads_every_annotation_file_once(dataset, fraction, tmp_path):
    tool = load_tool()
    folder = tmp_path / dataset
    items = tool.FOLDERS[dataset](folder, ANNOTATIONS, fraction)
    figures = tool.startup(dataset, folder, tmp_path / "run")
    assert figures["pairs"] == items > 0
    # MSR-VTT: the 9k csv, the captions json, the 1k-A csv (val and test); ActivityNet: two files per split
    assert len(figures["opens"]) == {"msrvtt": 3, "activitynet": 4}[dataset]
    assert set(figures["opens"].values()) == {1}, figures["opens"]


def test_the_loaders_deliver_uint8_that_the_model_normalises_as_the_cpu_did(data_dir, tmp_path):
    """From the frame cache (train) and from the video (eval), padding included: normalised on the model's
    device, a delivered clip is bit for bit the float clip the reader normalised on the CPU before."""
    cfg = compose_train(SMALL_OVERRIDES + ["data.frame_cache.mode=build"], data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.prepare_data()
    datamodule.setup("fit")
    prep = datamodule.preprocessing
    train = datamodule.train_dataloader()
    assert datamodule.caches_used["train"]
    batch = next(iter(train))
    assert batch["frames"].dtype == torch.uint8 and not train.pin_memory  # no GPU trainer: nothing to pin for
    cpu_reader = ClipReader(datamodule.backend, datamodule.train_sampler, ClipFrameTransform(prep))
    for row, video_index in enumerate(batch["video_index"].tolist()):
        video = datamodule.records["train"].videos[video_index]
        expected, mask = cpu_reader.read(video)
        delivered = normalize_frames(batch["frames"][row], prep.mean, prep.std, batch["frame_mask"][row])
        assert torch.equal(batch["frame_mask"][row], mask) and torch.equal(delivered, expected)


@pytest.mark.slow
def test_bench_loader_measures_each_source_and_augmentation(tmp_path):
    out = tmp_path / "loader.json"
    command = [
        "tools/bench_loader.py",
        "--sources",
        "cache",
        "video",
        "--augments",
        "none",
        "xpool",
        "--clips",
        "8",
        "--train-videos",
        "8",
        "--breakdown",
        "--json",
        str(out),
    ]
    result = run_tool(*command, timeout=900)
    figures = json.loads(out.read_text())
    for source in ("cache", "video"):
        for augment in ("none", "xpool"):
            rate = figures["per_worker_clips_per_s"][source][augment]
            assert rate > 0 and figures["workers_for_gpu"][source][augment] == math.ceil(1250 / rate)
    assert figures["ms_per_clip"]["read a clip from the frame cache"] > 0
    assert "| cache | none |" in result.stdout
