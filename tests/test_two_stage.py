"""tvr.search.two_stage: exhaustive search is the top-k of the head's full score matrix, two-stage search
is exact once the first stage proposes every video, and recall says how many true top-k it kept."""

from __future__ import annotations

import pytest
import torch

from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads import create_head
from tvr.models.heads.base import masked_mean_of_unit_frames
from tvr.search.two_stage import exhaustive_search, recall_at_k, two_stage_search
from tvr.search.vector_index import VectorIndex

D, T, L = 32, 5, 7


def xpool_gallery(num_texts: int, num_videos: int, seed: int = 0):
    """An X-Pool head with random weights, its text and video representations (some videos padded),
    and the query-independent summaries a first stage searches."""
    torch.manual_seed(seed)
    head = create_head("xpool", embed_dim=D, num_heads=2).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    text = TextFeatures(
        torch.randn(num_texts, D, generator=generator),
        torch.randn(num_texts, L, D, generator=generator),
        torch.ones(num_texts, L, dtype=torch.bool),
    )
    mask = torch.ones(num_videos, T, dtype=torch.bool)
    mask[::3, 3:] = False
    frames = torch.randn(num_videos, T, D, generator=generator) * mask[..., None]
    with torch.no_grad():
        text_repr, video_repr = head.encode_text(text), head.encode_video(FrameFeatures(frames, mask))
    text_summary = torch.nn.functional.normalize(text.sentence, dim=-1)
    video_summary = masked_mean_of_unit_frames(frames, mask)
    return head, text_repr, video_repr, text_summary, video_summary


@torch.no_grad()
def test_exhaustive_search_is_the_top_k_of_the_full_matrix():
    head, text_repr, video_repr, _, _ = xpool_gallery(num_texts=9, num_videos=23)
    full = head.similarity(text_repr, video_repr)
    expected = torch.topk(full, 6, dim=1)
    # Tiles smaller than both sides exercise the running top-k merge across query and video tiles.
    scores, ids = exhaustive_search(head, text_repr, video_repr, top_k=6, video_chunk=5, query_chunk=4)
    assert torch.equal(ids, expected.indices)
    torch.testing.assert_close(scores, expected.values)


@torch.no_grad()
def test_two_stage_with_every_video_proposed_equals_exhaustive():
    head, text_repr, video_repr, text_summary, video_summary = xpool_gallery(num_texts=9, num_videos=23)
    index = VectorIndex.build(video_summary)
    reference = exhaustive_search(head, text_repr, video_repr, top_k=5)
    scores, ids = two_stage_search(
        head, text_repr, text_summary, index, video_repr, rerank_k=23, top_k=5, query_chunk=4, video_chunk=6
    )
    assert torch.equal(ids, reference[1])
    torch.testing.assert_close(scores, reference[0])
    assert recall_at_k(ids, reference[1]) == 1.0


@torch.no_grad()
def test_two_stage_only_returns_first_stage_candidates_rescored_by_the_head():
    head, text_repr, video_repr, text_summary, video_summary = xpool_gallery(num_texts=6, num_videos=40)
    index = VectorIndex.build(video_summary)
    _, candidates = index.search(text_summary, 8)
    full = head.similarity(text_repr, video_repr)
    scores, ids = two_stage_search(head, text_repr, text_summary, index, video_repr, rerank_k=8, top_k=3)
    for query in range(6):
        # The head's own ranking restricted to the proposed videos, not the summary ranking.
        restricted = full[query, candidates[query]]
        best = torch.topk(restricted, 3)
        assert ids[query].tolist() == candidates[query][best.indices].tolist()
        torch.testing.assert_close(scores[query], best.values)


@torch.no_grad()
def test_recall_counts_shared_ids_and_ignores_padding():
    reference = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = torch.tensor([[4, 9, 1, -1], [8, 7, 6, 5]])
    # Query 0 finds 2 of its 4 (the -1 padding matches nothing), query 1 all 4: (0.5 + 1.0) / 2.
    assert recall_at_k(found, reference) == pytest.approx(0.75)
    assert recall_at_k(torch.full((2, 4), -1), reference) == 0.0


@torch.no_grad()
def test_misuse_is_refused_with_the_option_named():
    head, text_repr, video_repr, text_summary, video_summary = xpool_gallery(num_texts=2, num_videos=10)
    index = VectorIndex.build(video_summary)
    with pytest.raises(ValueError, match="top_k=5 is larger than rerank_k=3"):
        two_stage_search(head, text_repr, text_summary, index, video_repr, rerank_k=3, top_k=5)
    with pytest.raises(ValueError, match="the index holds 9 video summaries but video_repr has 10 videos"):
        two_stage_search(head, text_repr, text_summary, VectorIndex.build(video_summary[:9]), video_repr, 5, 5)
    with pytest.raises(ValueError, match="top_k=0 must be at least 1"):
        exhaustive_search(head, text_repr, video_repr, top_k=0)
    with pytest.raises(ValueError, match="found_ids has 1 queries but reference_ids has 2"):
        recall_at_k(torch.zeros(1, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
