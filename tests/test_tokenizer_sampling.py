"""Caption tokenisation, frame sampling rules (datasets spec §1.2-§1.4) and batch de-duplication."""

import random

import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.data.clips import collate, collate_distinct_videos
from tvr.data.sampling import create_sampler
from tvr.data.tokenizer import CaptionTokenizer

SOT, EOT = 49406, 49407


def test_tokenizer_truncates_to_max_words_and_pads_with_zero():
    tokenizer = CaptionTokenizer(max_words=8)
    long = tokenizer("A Person is Connecting something to the SYSTEM while talking loudly")
    assert long.shape == (8,)
    assert long[0] == SOT and long[-1] == EOT  # SOT + 6 BPE tokens + EOT
    assert long.tolist()[1:7] == tokenizer.bpe.encode("a person is connecting something to")[:6]
    short = tokenizer("a dog")
    assert short.tolist()[:4] == [SOT, *tokenizer.bpe.encode("a dog"), EOT] and short[4:].eq(0).all()
    assert tokenizer("A DOG").tolist() == short.tolist()  # lower-cased like CLIP's BPE


def test_a_caption_tokenised_again_is_the_same_and_a_new_tensor():
    tokenizer = CaptionTokenizer(max_words=8)
    first = tokenizer("a dog runs")
    first[1] = -1  # a caller changing its copy in place (e.g. word masking) changes nothing else
    again = tokenizer("a dog runs")
    assert again.tolist() == [SOT, *tokenizer.bpe.encode("a dog runs"), EOT, 0, 0, 0]


def test_clip4clip_sampler_one_frame_per_second():
    sampler = create_sampler("clip4clip", max_frames=12)
    assert sampler(num_frames=30, fps=3.0) == list(range(0, 30, 3))  # 10 s at 3 fps -> 10 frames
    picks = [0, 3, 7, 10, 14, 17, 21, 24, 28, 31, 35, 39]  # spec §8.3 linspace over 40 seconds
    assert sampler(num_frames=120, fps=3.0) == [3 * i for i in picks]


def test_clip4clip_sampler_integer_fps_and_inclusive_span():
    sampler = create_sampler("clip4clip", max_frames=64)
    # fps is truncated to an integer; seconds 2..5 inclusive, frame 0 of each second
    assert sampler(num_frames=300, fps=29.97, start=2, end=5) == [58, 87, 116, 145]
    # the span is clipped to the duration, and reading stops at the last frame
    assert sampler(num_frames=10, fps=2.0, start=3, end=99) == [6, 8]


@pytest.mark.parametrize("slice_framepos, expected", [(0, [0, 1, 2]), (1, [5, 6, 7]), (2, [0, 3, 7])])
def test_clip4clip_slicing_modes(slice_framepos, expected):
    sampler = create_sampler("clip4clip", max_frames=3, slice_framepos=slice_framepos)
    assert sampler(num_frames=8, fps=1.0) == expected


def test_frame_order_options():
    assert create_sampler("clip4clip", max_frames=4, frame_order=1)(num_frames=4, fps=1.0) == [3, 2, 1, 0]
    shuffled = create_sampler("clip4clip", max_frames=4, frame_order=2)
    assert not shuffled.deterministic
    assert sorted(shuffled(num_frames=4, fps=1.0, rng=random.Random(0))) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="slice_framepos"):
        create_sampler("clip4clip", slice_framepos=5)


def test_segment_uniform_takes_middle_frames_and_repeats_the_last():
    sampler = create_sampler("segment_uniform", max_frames=4)
    # edges linspace(0, 100, 5) = 0, 25, 50, 75, 100 -> middles (0+24)//2, (25+49)//2, ...
    assert sampler(num_frames=100, fps=25.0) == [12, 37, 62, 87]
    assert sampler(num_frames=2, fps=25.0) == [0, 1, 1, 1]


def test_segment_random_stays_in_its_segment_and_survives_one_frame_segments():
    sampler = create_sampler("segment_random", max_frames=4)
    rng = random.Random(0)
    for _ in range(50):
        picks = sampler(num_frames=100, fps=25.0, rng=rng)
        assert all(25 * i <= p < 25 * (i + 1) - 1 for i, p in enumerate(picks))
    assert sampler(num_frames=4, fps=25.0, rng=rng) == [0, 1, 2, 3]  # one-frame segments


def test_unknown_sampler_lists_choices():
    with pytest.raises(
        KeyError, match="clip4clip, fps_uniform_decord, segment_passes, segment_random, segment_uniform"
    ):
        create_sampler("fps_uniform")


def test_a_batch_keeps_each_videos_first_pair_when_asked():
    items = [
        {"video_index": video, "tokens": torch.full((2,), float(position)), "failed_videos": []}
        for position, video in enumerate([3, 1, 3, 2, 1])
    ]
    batch = collate_distinct_videos(items)
    assert batch["video_index"].tolist() == [3, 1, 2]  # repeats dropped, first occurrences in order
    assert batch["tokens"][:, 0].tolist() == [0.0, 1.0, 3.0]


@pytest.mark.parametrize("dedup", [False, True])
def test_the_training_loader_deduplicates_videos_only_when_configured(dedup, data_dir, tmp_path):
    cfg = compose_train([f"data.dedup_batch_videos={str(dedup).lower()}"] + SMALL_OVERRIDES, data_dir, tmp_path)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    datamodule.setup("fit")
    assert datamodule.train_dataloader().collate_fn is (collate_distinct_videos if dedup else collate)
