"""The learned second-stage seam (RetrievalHead.rerank_queries, DiffusionRet's): evaluation ranks each direction on
its own re-scored matrix, reports the first stage beside it and says so, keeps unreadable videos out of the
candidates, splits the queries across DDP ranks, and tvr-search re-scores a query's best candidates with it.
A toy head with a transparent second stage stands in for DiffusionRet, whose numerics tests/test_diffusionret_*.py
check against the reference."""

import os
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tvr.errors import NonFiniteScoresError
from tvr.evaluation.engine import EncodedSplit, evaluate_encoded, rerank_direction, second_stage_pair
from tvr.evaluation.metrics import retrieval_metrics
from tvr.evaluation.report import describe_measurement, markdown_table, measured_block
from tvr.evaluation.rerank.dsl import dual_softmax
from tvr.models.heads.base import RetrievalHead
from tvr.search.two_stage import exhaustive_search, rescored_top, two_stage_search
from tvr.search.vector_index import VectorIndex

BONUS = {"t2v": 10.0, "v2t": 20.0}


class ToySecondStage(RetrievalHead):
    """Dot-product first stage; its second stage lifts each query's *lowest* candidate by a per-direction bonus
    plus ``query position / 1000 + seed``, so a wrong direction, row, seed or column shows in the numbers."""

    query_independent = False
    reranks_queries = True

    def __init__(self) -> None:
        super().__init__(embed_dim=2)
        self.calls = []

    def similarity(self, text_repr, video_repr):
        return text_repr["x"] @ video_repr["x"].t()

    def rerank_queries(self, direction, rows, queries, gallery, query_index, evaluation_seed=0):
        self.calls.append((direction, tuple(rows.shape), query_index.tolist(), len(gallery["x"])))
        out = rows.clone()
        lowest = rows.argmin(dim=1)
        out[torch.arange(len(rows)), lowest] += BONUS[direction] + query_index.to(rows.dtype) / 1000 + evaluation_seed
        return out

    def describe_rerank(self, evaluation_seed=0):
        return {"method": "toy", "kind": "learned, per query (not transductive)", "seed": evaluation_seed}


def expected_pair(scores, seed=0, readable=None):
    """The toy's second stage by hand: per direction, each (kept) query's lowest (kept) candidate lifted."""
    readable = torch.ones(scores.shape[1], dtype=torch.bool) if readable is None else readable
    t2v, v2t = scores.clone(), scores.t().clone()
    columns = torch.nonzero(readable).flatten()
    for query in range(scores.shape[0]):
        lowest = columns[scores[query, columns].argmin()]
        t2v[query, lowest] += BONUS["t2v"] + query / 1000 + seed
    for video in columns.tolist():
        lowest = scores.t()[video].argmin()
        v2t[video, lowest] += BONUS["v2t"] + video / 1000 + seed
    return t2v, v2t


def split(texts=6, videos=5, unreadable=()):
    generator = torch.Generator().manual_seed(3)
    dead = torch.zeros(videos, dtype=torch.bool)
    dead[list(unreadable)] = True
    return EncodedSplit(
        texts={"x": torch.randn(texts, 2, generator=generator)},
        videos={"x": torch.randn(videos, 2, generator=generator)},
        text_to_video=np.arange(texts) % videos,
        unreadable=dead,
        short=torch.zeros(videos, dtype=torch.bool),
    )


def test_each_direction_ranks_its_own_matrix_and_the_first_stage_is_reported_beside_it():
    head = ToySecondStage()
    encoded = split()
    metrics = evaluate_encoded(SimpleNamespace(head=head), encoded, {"seed": 3})
    scores = head.similarity(encoded.texts, encoded.videos)
    t2v, v2t = expected_pair(scores, seed=3)
    assert metrics["t2v"] == retrieval_metrics(t2v, encoded.text_to_video)["t2v"]
    assert metrics["v2t"] == retrieval_metrics(v2t.t(), encoded.text_to_video)["v2t"]
    assert metrics["first_stage"] == retrieval_metrics(scores, encoded.text_to_video)
    assert metrics["t2v"] != metrics["first_stage"]["t2v"]  # the lifts move ranks: the pair is really used
    assert metrics["second_stage"] == head.describe_rerank(3)
    table = markdown_table({"test": metrics}, measured=measured_block("test", metrics, 0, "none", "val", "best"))
    assert "| test (first stage alone) | t2v |" in table and "| test (first stage alone) | v2t |" in table
    described = " ".join(describe_measurement(measured_block("test", metrics, 0, "none", "val", "best")))
    assert "ranked by toy's second stage (learned, per query (not transductive): seed 3)" in described


def test_unreadable_videos_are_neither_candidates_nor_queries():
    head = ToySecondStage()
    encoded = split(unreadable=(1,))
    scores = head.similarity(encoded.texts, encoded.videos)
    t2v, v2t = second_stage_pair(SimpleNamespace(head=head), scores, encoded, seed=0)
    expected_t2v, expected_v2t = expected_pair(scores, readable=~encoded.unreadable)
    torch.testing.assert_close(t2v, expected_t2v, rtol=0, atol=0)
    torch.testing.assert_close(v2t, expected_v2t, rtol=0, atol=0)
    assert head.calls[0] == ("t2v", (6, 4), list(range(6)), 4)  # 4 readable candidates
    assert head.calls[1] == ("v2t", (4, 6), [0, 2, 3, 4], 6)  # the unreadable video asks nothing


def test_non_finite_scores_are_refused_before_the_second_stage_runs():
    """Finite representations can still score NaN (a broken head); the second stage must not rank them first."""

    class NanScores(ToySecondStage):
        def similarity(self, text_repr, video_repr):
            scores = super().similarity(text_repr, video_repr)
            scores[2, 3] = float("nan")
            return scores

    head = NanScores()
    with pytest.raises(NonFiniteScoresError, match="1 of 6 texts"):
        evaluate_encoded(SimpleNamespace(head=head), split(), {})
    assert head.calls == []
    # an unreadable video's column is not a candidate, so its scores are not checked
    metrics = evaluate_encoded(SimpleNamespace(head=head), split(unreadable=(3,)), {})
    assert metrics["unreadable_videos"] == 1 and len(head.calls) == 2


def test_a_transductive_reranker_rescores_each_directions_own_matrix():
    head = ToySecondStage()
    encoded = split()
    metrics = evaluate_encoded(SimpleNamespace(head=head), encoded, {"rerank": "dsl"})
    t2v, v2t = expected_pair(head.similarity(encoded.texts, encoded.videos))
    reranked_t2v, reranked_v2t = dual_softmax(t2v, over="texts"), dual_softmax(v2t.t(), over="videos")
    assert metrics["reranked"]["t2v"] == retrieval_metrics(reranked_t2v, encoded.text_to_video)["t2v"]
    assert metrics["reranked"]["v2t"] == retrieval_metrics(reranked_v2t, encoded.text_to_video)["v2t"]
    plain = dual_softmax(head.similarity(encoded.texts, encoded.videos), over="texts")
    assert metrics["reranked"]["t2v"] != retrieval_metrics(plain, encoded.text_to_video)["t2v"]


def _rerank_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        head, encoded = ToySecondStage(), split(texts=7, unreadable=(2,))
        scores = head.similarity(encoded.texts, encoded.videos)
        rows = rerank_direction(
            head,
            "t2v",
            scores,
            encoded.texts,
            encoded.videos,
            torch.ones(7, dtype=torch.bool),
            ~encoded.unreadable,
            5,
            "cpu",
        )
        torch.save({"rows": rows, "calls": head.calls}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_under_ddp_each_rank_rescores_a_share_of_the_queries_and_all_get_the_whole_matrix():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rerank_worker, args=(os.path.join(out_dir, "init"), out_dir), nprocs=2, join=True)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    encoded = split(texts=7, unreadable=(2,))
    expected, _ = expected_pair(ToySecondStage().similarity(encoded.texts, encoded.videos), 5, ~encoded.unreadable)
    for result in results:
        torch.testing.assert_close(result["rows"], expected, rtol=0, atol=0)
    assert [result["calls"][0][2] for result in results] == [[0, 1, 2], [3, 4, 5, 6]]  # shares, by query position


def test_search_rescores_each_querys_candidates_with_the_second_stage():
    head = ToySecondStage()
    encoded = split(texts=2, videos=6)
    summaries = torch.nn.functional.normalize(encoded.videos["x"], dim=-1)
    index = VectorIndex.build(summaries.numpy(), factory="Flat")
    queries = torch.nn.functional.normalize(encoded.texts["x"], dim=-1)
    scores, ids = two_stage_search(head, encoded.texts, queries, index, encoded.videos, rerank_k=6, top_k=1)
    first = head.similarity(encoded.texts, encoded.videos)
    for query in range(2):  # every video is a candidate: the lowest one, lifted by 10, comes first
        assert ids[query, 0] == first[query].argmin()
        assert scores[query, 0] == first[query].min() + BONUS["t2v"] + query / 1000


def test_the_recall_reference_runs_the_same_second_stage_over_the_exhaustive_candidates():
    head = ToySecondStage()
    encoded = split(texts=3, videos=6)
    index = VectorIndex.build(encoded.videos["x"].numpy(), factory="Flat")  # inner products = the first stage
    found_scores, found = two_stage_search(
        head, encoded.texts, encoded.texts["x"], index, encoded.videos, rerank_k=4, top_k=2
    )
    reference_scores, reference = rescored_top(
        head, encoded.texts, encoded.videos, *exhaustive_search(head, encoded.texts, encoded.videos, 4), top_k=2
    )
    assert torch.equal(found, reference)
    torch.testing.assert_close(found_scores, reference_scores)
    plain = exhaustive_search(head, encoded.texts, encoded.videos, 2)[1]
    assert not torch.equal(found, plain)  # the second stage moved a lifted candidate in: the plain top-2 differ
