"""Metrics: the reference's numbers on golden inputs, hand-computed cases, and every convention."""

import json

import numpy as np
import pytest

from conftest import FIXTURES
from tvr.errors import NonFiniteScoresError
from tvr.evaluation.metrics import ground_truth_ranks, retrieval_metrics, summarize_ranks

GOLDEN = FIXTURES / "golden"


def _golden():
    return np.load(GOLDEN / "metrics_golden.npz"), json.loads((GOLDEN / "metrics_golden.json").read_text())


def _assert_matches_reference(ours: dict, reference: dict) -> None:
    for ours_key, ref_key in (("R1", "R1"), ("R5", "R5"), ("R10", "R10"), ("MdR", "MedianR"), ("MnR", "MeanR")):
        # the reference computed some multi-caption values in float32, hence the relative tolerance
        assert ours[ours_key] == pytest.approx(reference[ref_key], rel=1e-7, abs=0), ours_key


@pytest.mark.parametrize("case", ["square_300", "square_37", "square_cosine_500"])
def test_square_cases_reproduce_clip4clip(case):
    arrays, expected = _golden()
    result = retrieval_metrics(arrays[case])
    for direction in ("t2v", "v2t"):
        _assert_matches_reference(result[direction], expected[case][direction])
        values = result[direction]
        assert values["RSum"] == pytest.approx(values["R1"] + values["R5"] + values["R10"])


def test_multi_caption_case_reproduces_clip4clip():
    arrays, expected = _golden()
    result = retrieval_metrics(arrays["multi_sim"], arrays["multi_text_video"], t2v_median="lower")
    _assert_matches_reference(result["t2v"], expected["multi"]["t2v"])
    _assert_matches_reference(result["v2t"], expected["multi"]["v2t"])


def test_hand_computed_square_case():
    sim = np.array(
        [
            [0.9, 0.1, 0.3],  # text 0: its video ranks 1st
            [0.8, 0.5, 0.2],  # text 1: 0.8 beats its 0.5 -> rank 2
            [0.7, 0.6, 0.1],  # text 2: both others beat 0.1 -> rank 3
        ]
    )
    t2v = retrieval_metrics(sim)["t2v"]
    assert t2v["R1"] == pytest.approx(100 / 3)
    assert t2v["R5"] == 100.0 and t2v["R10"] == 100.0
    assert t2v["MdR"] == 2.0 and t2v["MnR"] == 2.0
    v2t = retrieval_metrics(sim)[
        "v2t"
    ]  # columns: video0 -> text0 (0.9 top), video1 -> 0.5 < 0.6 -> 2, video2 -> 0.1 < 0.3, 0.2 -> 3
    assert v2t["R1"] == pytest.approx(100 / 3) and v2t["MnR"] == 2.0


def test_ties_use_the_optimistic_rank():
    # Text 0 ties its video with another at 0.5. CLIP4Clip's compute_metrics would emit two entries for
    # this row (positions 0 and 1) and count 4 queries; tvr counts the query once, at rank 1.
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.1], [0.3, 0.8, 0.4]])
    ranks = ground_truth_ranks(sim, np.arange(3))
    assert ranks.tolist() == [1.0, 1.0, 2.0]
    t2v = retrieval_metrics(sim)["t2v"]
    assert t2v["R1"] == pytest.approx(200 / 3)


def test_median_conventions_differ_for_an_even_count():
    ranks = np.array([1.0, 2.0, 5.0, 9.0])
    assert summarize_ranks(ranks, median="mean")["MdR"] == 3.5  # np.median
    assert summarize_ranks(ranks, median="lower")["MdR"] == 2.0  # torch.median
    with pytest.raises(ValueError, match="median"):
        summarize_ranks(ranks, median="upper")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_score_fails_with_the_counts_instead_of_dropping_the_query(bad):
    sim = np.eye(4)
    sim[1, 2] = bad  # not even a ground-truth entry: the references would silently rank around it
    sim[3, :] = bad  # a whole text, as a NaN text embedding produces
    with pytest.raises(NonFiniteScoresError, match=r"2 of 4 texts \(rows 1, 3\) and 4 of 4 videos"):
        retrieval_metrics(sim)


def test_unreadable_videos_are_misses_at_the_worst_rank_and_never_win_as_distractors():
    # 4 videos; video 2 is unreadable and scored as an empty clip (0 against every text).
    sim = np.array(
        [
            [0.9, 0.1, 0.0, 0.2],  # text 0: its video first; the empty video would not matter
            [-0.3, -0.1, 0.0, -0.2],  # text 1: GT -0.1 is beaten only by the empty video's 0.0
            [0.1, 0.2, 0.0, 0.3],  # text 2: the empty video's own caption -> a miss at rank 4
            [0.4, 0.1, 0.0, 0.5],  # text 3: GT first
        ]
    )
    plain = retrieval_metrics(sim)
    assert plain["t2v"]["R1"] == 50.0  # today's bug: before the fix text 1 lost to the empty video (R@1 50)
    result = retrieval_metrics(sim, unreadable_videos=[2])
    # t2v ranks: 1, 1 (the empty distractor no longer wins), 4 (gallery size), 1
    assert result["t2v"]["R1"] == 75.0 and result["t2v"]["MnR"] == pytest.approx(7 / 4) and result["t2v"]["R5"] == 100.0
    # v2t: video 0 -> text 0 (0.9) rank 1; video 1: 0.2 (text 2), 0.1 (texts 0, 3) beat its -0.1 -> rank 4;
    # video 2 unreadable -> 4 (it tied at 0.0 with every text and had rank 1 before); video 3 -> 0.5 rank 1
    assert retrieval_metrics(sim)["v2t"]["R1"] == 75.0
    assert result["v2t"]["R1"] == 50.0 and result["v2t"]["MnR"] == pytest.approx(10 / 4)


def test_scores_of_unreadable_videos_are_not_checked_but_every_other_is():
    sim = np.eye(3)
    sim[:, 1] = np.nan  # e.g. a text-conditioned head on a clip with no frame
    assert retrieval_metrics(sim, unreadable_videos=[1])["t2v"]["R1"] == pytest.approx(200 / 3)
    sim[0, 2] = np.nan
    with pytest.raises(NonFiniteScoresError, match="1 of 3 texts"):
        retrieval_metrics(sim, unreadable_videos=[1])


def _brute_force(sim: np.ndarray, text_to_video: np.ndarray):
    num_videos = sim.shape[1]
    t2v = []
    for i, gt in enumerate(text_to_video):
        order = sorted(range(num_videos), key=lambda v: -sim[i, v])
        t2v.append(order.index(gt) + 1)
    v2t = []
    for v in range(num_videos):
        group_scores = [max(sim[j, v] for j in np.flatnonzero(text_to_video == g)) for g in range(num_videos)]
        order = sorted(range(num_videos), key=lambda g: -group_scores[g])
        v2t.append(order.index(v) + 1)
    return np.array(t2v, float), np.array(v2t, float)


def test_multi_caption_protocol_matches_brute_force():
    rng = np.random.default_rng(0)
    counts = [1, 4, 2, 3, 1]  # 5 videos with 1-4 captions each
    text_to_video = np.repeat(np.arange(5), counts)
    rng.shuffle(text_to_video)  # captions need not be grouped
    sim = rng.normal(size=(len(text_to_video), 5))
    t2v_ranks, v2t_ranks = _brute_force(sim, text_to_video)
    result = retrieval_metrics(sim, text_to_video)
    assert result["t2v"] == pytest.approx(summarize_ranks(t2v_ranks))
    assert result["v2t"] == pytest.approx(summarize_ranks(v2t_ranks))
    assert result["t2v"]["MnR"] == pytest.approx(t2v_ranks.mean())


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="without any caption"):
        retrieval_metrics(np.zeros((2, 3)), [0, 0])
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(np.zeros((2, 2)), [0])
