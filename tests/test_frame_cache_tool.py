"""tools/cache_frames.py builds the caches the training run with the same overrides reads, and a run over
a cache built for other settings says so instead of silently decoding every video again."""

import importlib.util
import json
import logging

import pytest
import torch

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.data.clips import ClipReader
from tvr.data.transforms import ClipFrameTransform, Preprocessing, normalize_frames

spec = importlib.util.spec_from_file_location("cache_frames", REPO_ROOT / "tools" / "cache_frames.py")
cache_frames = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cache_frames)

TEST_SPLIT_ONLY = ["data.splits.train=null", "data.splits.val=null"]  # 12 videos: decoding takes well under a second
CLIP4CLIP_8 = "clip4clip sampler (feature_framerate=1, slice_framepos=2, frame_order=0), up to 8 frames"


def run_tool(overrides: list[str], data_dir, capsys) -> str:
    cache_frames.main([*overrides, f"paths.data_dir={data_dir}", "--workers", "1"])
    return capsys.readouterr().out


def datamodule_for(overrides: list[str], data_dir, tmp_path):
    cfg = compose_train(overrides, data_dir, tmp_path)
    return build_datamodule(cfg.data, preprocessing=backbone_preprocessing(cfg.backbone))


def test_tool_takes_the_image_size_of_the_named_backbone_and_refuses_the_test_backbone_on_real_data(
    data_dir, tmp_path, capsys
):
    overrides = (
        SMALL_OVERRIDES
        + TEST_SPLIT_ONLY
        + [f"data.frame_cache.dir={tmp_path / 'cache'}", "data.frame_cache.mode=auto", "backbone=vit_b32"]
    )
    out = run_tool(overrides, data_dir, capsys)
    assert "224 px, the input size of backbone=vit_b32 (ViT-B-32-quickgelu)" in out
    [cache_dir] = (tmp_path / "cache").iterdir()
    assert json.loads((cache_dir / "meta.json").read_text())["shape"] == [12, 8, 3, 224, 224]
    # the training run with the same overrides reads that cache
    run = datamodule_for(overrides, data_dir, tmp_path)
    run.setup("test")
    assert run._cache_for("test") is not None

    # MSR-VTT without a backbone would be cached at the tiny backbone's 32 px: refused before any file is read
    # (there is no MSR-VTT under data_dir at all)
    with pytest.raises(SystemExit, match=r"data=msrvtt without a backbone.*32 px.*backbone=vit_b32"):
        cache_frames.main(["data=msrvtt", f"paths.data_dir={tmp_path / 'empty'}"])
    # the input size is the backbone's: a config that still sets one is refused, naming the backbone's
    for key in ("data.image_size", "backbone.image_size"):
        with pytest.raises(
            SystemExit, match=f"{key} is no longer a setting: backbone=tiny takes 32 px input.*remove {key}"
        ):
            cache_frames.main(SMALL_OVERRIDES + [f"+{key}=64", f"paths.data_dir={data_dir}"])


def test_tool_prints_what_it_built_and_what_it_found(data_dir, tmp_path, capsys):
    cache_root = tmp_path / "cache"
    overrides = SMALL_OVERRIDES + [f"data.frame_cache.dir={cache_root}", "data.train_augment=xpool"]
    first = run_tool(overrides, data_dir, capsys)
    paths = {split: next(cache_root.glob(f"{split}-*")) for split in ("val", "test")}
    assert "Frame caches at 32 px, the input size of backbone=tiny (tvr-tiny)" in first
    assert f"| val | val | built | 8 | 0 | {CLIP4CLIP_8}, 32 px | {paths['val']} |" in first
    assert f"| test | test | built | 12 | 0 | {CLIP4CLIP_8}, 32 px | {paths['test']} |" in first
    assert "| train | train | not cached: random frames (sampler or augmentation) |" in first

    again = run_tool(overrides, data_dir, capsys)
    assert f"| test | test | valid, kept | 12 | 0 | {CLIP4CLIP_8}, 32 px | {paths['test']} |" in again

    meta = json.loads((paths["test"] / "meta.json").read_text())
    (paths["test"] / "meta.json").write_text(json.dumps(meta | {"complete": False}))
    other_size = run_tool(overrides + ["backbone=vit_b32"], data_dir, capsys)
    assert "at 224 px, the input size of backbone=vit_b32" in other_size
    assert other_size.count("| built |") == 2
    assert "Other caches in the same folder" in other_size
    assert f"- {paths['test']}: split test, {CLIP4CLIP_8}, 32 px, unfinished" in other_size
    assert f"- {paths['val']}: split val, {CLIP4CLIP_8}, 32 px" in other_size
    resumed = run_tool(overrides, data_dir, capsys)
    assert "| test | test | rebuilt (the cache is incomplete" in resumed and "| val | val | valid, kept |" in resumed


def test_run_over_a_cache_built_for_another_image_size_names_both_settings(data_dir, tmp_path, caplog):
    common = SMALL_OVERRIDES + TEST_SPLIT_ONLY + [f"data.frame_cache.dir={tmp_path}"]
    datamodule_for(common + ["data.frame_cache.mode=build"], data_dir, tmp_path).prepare_data()  # 32 px
    [cache_32] = tmp_path.iterdir()

    run = datamodule_for(common + ["data.frame_cache.mode=auto", "backbone=vit_b32"], data_dir, tmp_path)
    with caplog.at_level(logging.INFO, logger="tvr.data"):
        run.prepare_data()
        run.prepare_data()  # as Lightning does again for the test stage: said once
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert f"no frame cache for split 'test' matches this run's settings ({CLIP4CLIP_8}, 224 px)" in warning
    assert f"{cache_32} was built for {CLIP4CLIP_8}, 32 px" in warning
    assert "decoding from the video files instead" in warning
    assert "`python tools/cache_frames.py " in warning and "backbone=vit_b32" in warning
    run.setup("test")
    assert run._cache_for("test") is None

    # build mode builds the run's cache beside the other one, says so, and reads it
    caplog.clear()
    build = datamodule_for(common + ["data.frame_cache.mode=build", "backbone=vit_b32"], data_dir, tmp_path)
    with caplog.at_level(logging.INFO, logger="tvr.data"):
        build.prepare_data()
    [cache_224] = set(tmp_path.iterdir()) - {cache_32}
    assert f"building the cache for this run's settings at {cache_224}" in caplog.text
    build.setup("test")
    assert build._cache_for("test") is not None

    # an unfinished cache at the run's own path is named with its reason
    meta = json.loads((cache_224 / "meta.json").read_text())
    (cache_224 / "meta.json").write_text(json.dumps(meta | {"complete": False}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tvr.data"):
        datamodule_for(common + ["data.frame_cache.mode=auto", "backbone=vit_b32"], data_dir, tmp_path).prepare_data()
    assert f"frame cache {cache_224} not used for split 'test': the cache is incomplete" in caplog.text


def test_the_data_module_feeds_the_preprocessing_tvr_gives_it(data_dir, tmp_path):
    cfg = compose_train(SMALL_OVERRIDES + TEST_SPLIT_ONLY + ["data.frame_cache.mode=off"], data_dir, tmp_path)
    other = Preprocessing(24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="squash")
    datamodule = build_datamodule(cfg.data, preprocessing=other)
    datamodule.setup("test")
    videos = datamodule.test_dataloader()[0].dataset
    video = datamodule.records["test"].videos[0]
    expected, _ = ClipReader(datamodule.backend, datamodule.eval_sampler, ClipFrameTransform(other)).read(video)
    item = videos[0]  # uint8, normalised by the model on its device: here with the preprocessing's mean/std
    delivered = normalize_frames(item["frames"], other.mean, other.std, item["frame_mask"])
    assert item["frames"].dtype == torch.uint8 and torch.equal(delivered, expected) and expected.shape[-1] == 24
