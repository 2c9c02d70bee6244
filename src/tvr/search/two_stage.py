"""Top-k retrieval for text-conditioned heads (X-Pool) over galleries too large to score every pair.

A text-conditioned head has no per-video vector to index, so scoring a query means running the head on
every (query, video) pair. ``two_stage_search`` narrows that down first: a :class:`VectorIndex` over
query-independent per-video summaries (e.g. mean-pooled unit frame vectors) proposes ``rerank_k``
candidates per query, and only those pairs go through ``head.similarity``; a head with a learned second stage
(DiffusionRet) then re-scores each query's best of them (:meth:`RetrievalHead.rerank_queries`). ``exhaustive_search`` scores
every pair and is the reference that ``recall_at_k`` measures the first stage against.
"""

from __future__ import annotations

import torch

from tvr.models.heads.base import Repr, RetrievalHead, repr_length, select_repr, slice_repr
from tvr.search.vector_index import VectorIndex


def two_stage_search(
    head: RetrievalHead,
    text_repr: Repr,
    text_summary: torch.Tensor,
    index: VectorIndex,
    video_repr: Repr,
    rerank_k: int,
    top_k: int,
    query_chunk: int = 64,
    video_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and gallery ids ``[Nq, top_k]``, best first, of the head's best videos among each query's
    ``rerank_k`` nearest summaries (``text_summary`` ``[Nq, D]`` searched in ``index``).

    Each query is scored only against its own candidates, ``video_chunk`` of them at a time, so memory
    stays bounded whatever ``rerank_k`` is. ``rerank_k`` and ``top_k`` are clamped to the gallery size.
    A query for which an approximate index returned fewer than ``top_k`` candidates has its row padded
    with score ``-inf`` and id -1.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    if top_k > rerank_k:
        raise ValueError(
            f"top_k={top_k} is larger than rerank_k={rerank_k}: the second stage can only return candidates "
            "the first stage proposed, so raise rerank_k to at least top_k"
        )
    gallery = repr_length(video_repr)
    if index.ntotal != gallery:
        raise ValueError(
            f"the index holds {index.ntotal} video summaries but video_repr has {gallery} videos; "
            "build the index from the same gallery, in the same order"
        )
    rerank_k, top_k = min(rerank_k, gallery), min(top_k, gallery)
    num_queries = text_summary.shape[0]
    scores = torch.full((num_queries, top_k), float("-inf"))
    ids = torch.full((num_queries, top_k), -1, dtype=torch.long)
    for start in range(0, num_queries, query_chunk):
        _, candidates = index.search(text_summary[start : start + query_chunk], rerank_k)
        for offset, query_candidates in enumerate(candidates):
            query = start + offset
            query_candidates = query_candidates[query_candidates >= 0]  # drop faiss's -1 padding
            one_text = slice_repr(text_repr, query, query + 1)
            candidate_scores = _score_candidates(head, one_text, video_repr, query_candidates, video_chunk)
            _keep_best(head, one_text, video_repr, query, query_candidates, candidate_scores, scores, ids)
    return scores, ids


def _keep_best(
    head: RetrievalHead,
    one_text: Repr,
    video_repr: Repr,
    query: int,
    candidates: torch.Tensor,
    candidate_scores: torch.Tensor,
    scores: torch.Tensor,
    ids: torch.Tensor,
) -> None:
    """Row ``query`` of ``scores`` and ``ids`` (``-inf`` / -1 padded): the best of the query's candidates after
    the head's second stage, as many as the rows hold."""
    rescored = second_stage(head, one_text, video_repr, query, candidates, candidate_scores)
    best = torch.topk(rescored, min(scores.shape[1], len(candidates)))
    scores[query, : len(best.indices)] = best.values
    ids[query, : len(best.indices)] = candidates[best.indices]


def second_stage(
    head: RetrievalHead, one_text: Repr, video_repr: Repr, query: int, candidates: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """A head's learned second stage (DiffusionRet's) over one query's candidate ``scores``; the scores as they
    are for heads without one."""
    if not head.reranks_queries or not len(candidates):
        return scores
    return head.rerank_queries(
        "t2v", scores[None], one_text, select_repr(video_repr, candidates), torch.tensor([query])
    )[0]


def rescored_top(
    head: RetrievalHead, text_repr: Repr, video_repr: Repr, scores: torch.Tensor, ids: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``top_k`` of each query's listed candidates (``[Nq, n]`` scores and ids, ``-1`` padding) after
    the head's second stage: what :func:`two_stage_search` returns when those are its candidates."""
    out_scores = torch.full((len(ids), min(top_k, ids.shape[1])), float("-inf"))
    out_ids = torch.full(out_scores.shape, -1, dtype=torch.long)
    for query, (row_scores, row_ids) in enumerate(zip(scores, ids)):
        real = row_ids >= 0
        one_text = slice_repr(text_repr, query, query + 1)
        _keep_best(head, one_text, video_repr, query, row_ids[real], row_scores[real], out_scores, out_ids)
    return out_scores, out_ids


def _score_candidates(
    head: RetrievalHead, one_text: Repr, video_repr: Repr, candidates: torch.Tensor, video_chunk: int
) -> torch.Tensor:
    """``head.similarity`` of one text against the listed videos, ``[len(candidates)]``."""
    parts = []
    for chunk in candidates.split(video_chunk):
        parts.append(head.similarity(one_text, select_repr(video_repr, chunk))[0])
    return torch.cat(parts) if parts else torch.empty(0)


def exhaustive_search(
    head: RetrievalHead, text_repr: Repr, video_repr: Repr, top_k: int, video_chunk: int = 4096, query_chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and ids ``[Nq, min(top_k, gallery)]``, best first, with every video scored by the head.

    Tiles of ``query_chunk x video_chunk`` pairs keep memory bounded; a running top-k per query means
    the full ``[Nq, gallery]`` score matrix is never held.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    gallery = repr_length(video_repr)
    num_queries = repr_length(text_repr)
    top_k = min(top_k, gallery)
    best_scores = torch.full((num_queries, top_k), float("-inf"))
    best_ids = torch.full((num_queries, top_k), -1, dtype=torch.long)
    for query_start in range(0, num_queries, query_chunk):
        texts = slice_repr(text_repr, query_start, query_start + query_chunk)
        rows = slice(query_start, query_start + query_chunk)
        for video_start in range(0, gallery, video_chunk):
            tile = head.similarity(texts, slice_repr(video_repr, video_start, video_start + video_chunk))
            tile_ids = torch.arange(video_start, video_start + tile.shape[1]).expand_as(tile)
            merged_scores = torch.cat([best_scores[rows], tile], dim=1)
            merged_ids = torch.cat([best_ids[rows], tile_ids], dim=1)
            best = torch.topk(merged_scores, top_k, dim=1)
            best_scores[rows] = best.values
            best_ids[rows] = merged_ids.gather(1, best.indices)
    return best_scores, best_ids


def recall_at_k(found_ids: torch.Tensor, reference_ids: torch.Tensor) -> float:
    """Mean over queries of ``|found ∩ reference| / |reference|`` for id lists ``[Nq, k_found]`` and
    ``[Nq, k_reference]``; faiss's -1 padding in ``found_ids`` never counts as a hit."""
    if found_ids.shape[0] != reference_ids.shape[0]:
        raise ValueError(
            f"found_ids has {found_ids.shape[0]} queries but reference_ids has {reference_ids.shape[0]}; "
            "pass the two searches' ids for the same queries"
        )
    if reference_ids.numel() == 0:
        raise ValueError("reference_ids is empty: recall needs at least one query with one reference id")
    valid = found_ids >= 0
    hits = ((found_ids[:, :, None] == reference_ids[:, None, :]) & valid[:, :, None]).any(dim=1)
    return hits.float().mean().item()
