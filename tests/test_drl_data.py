"""The DRL family's data rules (TempMe, GLSCL, HBI): the ``fps_uniform_decord`` sampler, the clip-level
``drl_randaugment`` training augmentation, their config checks, what metrics.json records, and the GLSCL
recipes that use them."""

import random

import numpy as np
import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train
from test_video_data import frame_numbers, numbered_video
from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.data.clips import ClipReader
from tvr.data.order import item_randomness
from tvr.data.records import VideoRef
from tvr.data.sampling import create_sampler
from tvr.data.transforms import ClipFrameTransform, Preprocessing
from tvr.data.video import VideoReadError
from tvr.data.video.decord_backend import DecordBackend
from tvr.data.video.pyav_backend import PyAVBackend
from tvr.errors import ConfigError
from tvr.validation import validate_train_config

GLSCL_RECIPES = ["glscl_msrvtt", "glscl_msvd", "glscl_lsmdc", "glscl_didemo", "glscl_activitynet"]


def sampler(fill: str, max_frames: int = 12, **options):
    return create_sampler("fps_uniform_decord", max_frames=max_frames, fill=fill, **options)


# (num_frames, fps, start, end, max_frames, pad indices, repeat indices), computed by hand from the rule:
# stride round(fps), positions range(first, last + 1, stride), int(linspace) down to max_frames if longer;
# repeat: int(linspace(first, last, max_frames)) when shorter.
CASES = {
    "20 s at 3 fps, cut to 12": (
        60,
        3.0,
        None,
        None,
        12,
        [0, 3, 9, 15, 18, 24, 30, 36, 39, 45, 51, 57],
        [0, 3, 9, 15, 18, 24, 30, 36, 39, 45, 51, 57],
    ),
    "4 s at 25 fps": (100, 25.0, None, None, 12, [0, 25, 50, 75], [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]),
    "29.97 fps: stride 30": (
        300,
        29.97,
        None,
        None,
        12,
        list(range(0, 300, 30)),
        [0, 27, 54, 81, 108, 135, 163, 190, 217, 244, 271, 299],
    ),
    "12.5 fps: stride 12 (round half to even)": (
        100,
        12.5,
        None,
        None,
        12,
        list(range(0, 100, 12)),
        [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99],
    ),
    "span 2.7-5.2 s: whole seconds 2-5": (
        250,
        25.0,
        2.7,
        5.2,
        12,
        [50, 75, 100, 125],
        [50, 56, 63, 70, 77, 84, 90, 97, 104, 111, 118, 125],
    ),
    "reversed span is swapped": (250, 25.0, 5.0, 2.0, 4, [50, 75, 100, 125], [50, 75, 100, 125]),
    "empty span lasts one second": (250, 25.0, 3.0, 3.0, 4, [75, 100], [75, 83, 91, 100]),
    "negative start reads as 0": (250, 25.0, -1.5, 2.0, 3, [0, 25, 50], [0, 25, 50]),
    "span past the end is clipped": (100, 25.0, 2.0, 10.0, 3, [50, 75], [50, 74, 99]),
    "span from 2 s to the end": (100, 25.0, 2.0, None, 3, [50, 75], [50, 74, 99]),
    "one-frame video": (1, 25.0, None, None, 12, [0], [0] * 12),
    "fps 0 (unknown) reads as 1 fps": (5, 0.0, None, None, 12, [0, 1, 2, 3, 4], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]),
    "fps below 1: every frame": (4, 0.5, 2.0, 6.0, 4, [1, 2, 3], [1, 1, 2, 3]),
    "span starting after the end selects nothing": (100, 25.0, 10.0, 12.0, 4, [], []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fps_uniform_decord_indices_match_hand_computed_ones(case):
    num_frames, fps, start, end, max_frames, pad, repeat = CASES[case]
    assert sampler("pad", max_frames)(num_frames, fps, start, end) == pad
    assert sampler("repeat", max_frames)(num_frames, fps, start, end) == repeat


def test_video_framerate_sets_the_stride_and_everything_is_described():
    two_per_second = sampler("pad", video_framerate=2)
    assert two_per_second(60, 30.0) == [0, 15, 30, 45]  # stride round(30 / 2)
    assert two_per_second.deterministic and two_per_second(60, 30.0) == two_per_second(60, 30.0, rng=random.Random(1))
    assert two_per_second.describe() == {
        "sampler": "fps_uniform_decord",
        "max_frames": 12,
        "video_framerate": 2,
        "fill": "pad",
    }
    assert sampler("repeat").describe()["fill"] == "repeat"  # a frame cache of one fill is not used for the other
    assert sampler("repeat").always_full and not sampler("pad").always_full  # TempMe's towers need full clips
    with pytest.raises(ValueError, match="fill must be one of pad, repeat, got 'zero'"):
        sampler("zero")


def decoded_numbers(resized: torch.Tensor) -> list[int]:
    """Which frames of a :func:`numbered_video` a decoded clip (uint8 ``[T, 3, S, S]``) holds."""
    return frame_numbers(resized.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("backend", [DecordBackend, PyAVBackend])
def test_real_mp4_is_decoded_at_the_sampled_frames_padded_or_repeated(backend, tmp_path):
    path = numbered_video(tmp_path / "clip.mp4", num_frames=40, fps=4)  # 10 s; frame i has grey level 4 * i
    whole, span = VideoRef("v", path), VideoRef("v", path, start=2.5, end=4.9)  # span: seconds 2-4, frames 8-16
    pad, repeat = (
        ClipReader(backend(), sampler(fill, max_frames=6), ClipFrameTransform(Preprocessing(16)))
        for fill in ("pad", "repeat")
    )

    resized, count = pad.decode(whole)
    assert count == 6 and decoded_numbers(resized) == [0, 4, 12, 20, 28, 36]
    resized, count = pad.decode(span)
    assert count == 3 and decoded_numbers(resized) == [8, 12, 16]
    frames, mask = pad.read(span)
    assert frames.shape == (6, 3, 16, 16) and mask.tolist() == [True] * 3 + [False] * 3 and not frames[3:].any()

    resized, count = repeat.decode(span)
    assert count == 6 and decoded_numbers(resized) == [8, 9, 11, 12, 14, 16]
    assert repeat.read(span)[1].all()

    with pytest.raises(VideoReadError, match="selected no frames"):  # counted and reported by the datasets
        pad.read(VideoRef("v", path, start=20.0, end=25.0))


def noise(seed: int, size=(40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def augmented(transform: ClipFrameTransform, clip: np.ndarray, seed: int) -> torch.Tensor:
    random.seed(seed)
    np.random.seed(seed)
    return transform.resize_crop(clip)


def test_randaugment_applies_one_draw_to_every_frame_of_a_clip():
    transform = ClipFrameTransform(Preprocessing(16), augment="drl_randaugment")
    a, b = noise(0), noise(1)
    plain = ClipFrameTransform(Preprocessing(16)).resize_crop(np.stack([a]))[0]
    outputs = []
    for seed in range(30):
        same = augmented(transform, np.stack([a, a, a, a]), seed)
        assert all(torch.equal(frame, same[0]) for frame in same)  # identical frames stay identical
        mixed = augmented(transform, np.stack([a, b, a]), seed)
        assert torch.equal(mixed[0], mixed[2]) and torch.equal(mixed[0], same[0])  # a frame in between draws nothing
        outputs.append(same[0])
    assert sum(not torch.equal(out, plain) for out in outputs) >= 20  # the augmentation does change frames
    assert len({out.numpy().tobytes() for out in outputs}) >= 20  # and clips get different augmentations


def test_randaugment_draws_once_per_clip_from_the_per_sample_seeded_rngs():
    transform = ClipFrameTransform(Preprocessing(16), augment="drl_randaugment")
    clip = np.stack([noise(0), noise(1), noise(2)])
    augmented(transform, clip, seed=3)
    after_clip = (random.random(), np.random.random())
    augmented(transform, clip[:1], seed=3)
    assert (random.random(), np.random.random()) == after_clip  # RNGs advanced by one draw, not one per frame

    def sample(epoch: int, index: int) -> torch.Tensor:
        with item_randomness(seed=7, epoch=epoch, index=index):
            return transform.resize_crop(clip)

    assert torch.equal(sample(0, 5), sample(0, 5))  # reproducible in any worker, after any restart
    assert len({sample(epoch, index).numpy().tobytes() for epoch in (0, 1) for index in range(5)}) >= 8


def test_randaugment_sees_the_decoded_frames_before_resize_and_crop():
    transform = ClipFrameTransform(Preprocessing(16), augment="drl_randaugment")
    sizes = []
    draw = transform._rand_augment
    transform._rand_augment = lambda image: sizes.append(image.size) or draw(image)
    out = transform.resize_crop(np.stack([noise(0, (40, 80))] * 2))
    assert sizes == [(80, 40), (80, 40)] and out.shape == (2, 3, 16, 16)  # PIL sizes are (width, height)


def drl_overrides(fill: str) -> list[str]:
    return SMALL_OVERRIDES + [
        "data.video.train_sampler.name=fps_uniform_decord",
        f"+data.video.train_sampler.fill={fill}",
        "data.video.eval_sampler.name=fps_uniform_decord",
        "data.train_augment=drl_randaugment",
    ]


def test_datamodule_records_both_rules_and_never_caches_augmented_training_clips(data_dir, tmp_path):
    cfg = compose_train(drl_overrides("repeat"), data_dir, tmp_path)
    validate_train_config(cfg)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    facts = datamodule.describe()  # what tvr-train writes into metrics.json under "data"
    assert facts["train_sampler"] == {
        "sampler": "fps_uniform_decord",
        "max_frames": 8,
        "video_framerate": 1,
        "fill": "repeat",
    }
    assert facts["eval_sampler"] == {
        "sampler": "fps_uniform_decord",
        "max_frames": 8,
        "video_framerate": 1,
        "fill": "pad",
    }
    assert facts["train_augment"] == {
        "augment": "drl_randaugment",
        "timm": "rand-m7-n4-mstd0.5-inc1",
        "interpolation": "bicubic",
        "draw": "per clip",
    }
    assert not datamodule.train_transform.deterministic
    assert not datamodule.frames_are_fixed("train") and datamodule.frames_are_fixed("val")
    assert [role for role, _, _, _ in datamodule.cache_targets()] == ["val", "test"]  # the sampler alone is cacheable

    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["frames"].shape == (8, 8, 3, 32, 32) and batch["frame_mask"].all()  # 6 s at 1 fps, repeated to 8
    val_videos = datamodule.val_dataloader()[0].dataset
    assert val_videos[0]["frame_mask"].sum() == 6  # padded and masked


@pytest.mark.parametrize(
    "override, key, shown",
    [
        (
            "data.video.train_sampler.fill=zero",
            "data.video.train_sampler.fill",
            "got 'zero', expected one of pad, repeat",
        ),
        (
            "+data.video.eval_sampler.video_framerate=0",
            "data.video.eval_sampler.video_framerate",
            "got 0, expected an integer >= 1",
        ),
        (
            "+data.video.eval_sampler.slice_framepos=2",
            "data.video.eval_sampler.slice_framepos",
            "is not an option of frame sampler 'fps_uniform_decord'",
        ),  # a clip4clip option left on switching samplers
        ("data.train_augment=randaugment", "data.train_augment", "expected one of none, xpool, drl_randaugment"),
    ],
)
def test_a_bad_drl_option_fails_naming_its_key(override, key, shown, data_dir, tmp_path):
    cfg = compose_train(drl_overrides("pad") + [override], data_dir, tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_train_config(cfg)
    assert error.value.key == key and str(error.value).startswith(f"{key}: ") and shown in str(error.value)


@pytest.mark.parametrize("recipe", GLSCL_RECIPES)
def test_glscl_recipes_use_the_drl_rules(recipe, tmp_path):
    cfg = compose_train([f"experiment={recipe}"], tmp_path, tmp_path / "run")
    validate_train_config(cfg)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    frames = 64 if recipe in ("glscl_didemo", "glscl_activitynet") else 12  # spec §2.7 words/frames
    expected = {"sampler": "fps_uniform_decord", "max_frames": frames, "video_framerate": 1, "fill": "pad"}
    assert datamodule.train_sampler.describe() == datamodule.eval_sampler.describe() == expected
    assert datamodule.train_transform.describe()["augment"] == "drl_randaugment"
