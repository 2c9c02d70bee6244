"""Retrieval metrics as the text-video papers compute them (methods spec §5, datasets spec §1.6).

Conventions, each tested:
  * Rank: ``1 + #{gallery items scoring strictly higher than the ground truth}`` — the optimistic rank.
    Without ties it equals CLIP4Clip's and X-Pool's rank. Under exact ties CLIP4Clip's square
    ``compute_metrics`` emits one entry per tied position (and grows the denominator); we count a
    tied query once, at its best position.
  * Every score must be finite. The references drop queries whose ground-truth score is NaN or -inf (their
    multi-caption code pads with -inf); tvr never pads, so a non-finite score is a broken model or input
    and raises :class:`NonFiniteScoresError` instead of silently shrinking the denominator.
  * Unreadable videos (``unreadable_videos``) keep their column, so the gallery stays the protocol's size,
    but can never earn a hit: their own queries (their captions text-to-video, the video itself
    video-to-text) count as misses at the worst rank, the gallery size, and as a text-to-video distractor
    they score below everything (so they never win, nor tie, against a real video).
  * R@K in percent; MdR and MnR are 1-based. ``median="mean"`` is ``np.median`` (the average of the two
    middle ranks for an even count: CLIP4Clip square case, X-Pool); ``median="lower"`` is
    ``torch.median`` (the lower middle: CLIP4Clip's multi-caption text-to-video).
  * RSum = R@1 + R@5 + R@10 of one direction.
  * Several captions per video (MSVD): text-to-video ranks every caption over the videos; video-to-text
    scores a video against each *caption group* through the group's best caption, then ranks groups.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from tvr.errors import NonFiniteScoresError

Median = Literal["mean", "lower"]
DEFAULT_KS = (1, 5, 10)


def _as_numpy(sim) -> np.ndarray:
    if isinstance(sim, torch.Tensor):
        sim = sim.detach().float().cpu().numpy()
    return np.asarray(sim, dtype=np.float64)


def ground_truth_ranks(sim: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """1-based optimistic rank of ``ground_truth[i]`` in row ``i`` (every score must be finite)."""
    sim = _as_numpy(sim)
    rows = np.arange(sim.shape[0])
    target = sim[rows, ground_truth]
    higher = (sim > target[:, None]).sum(axis=1)
    return (higher + 1).astype(np.float64)


def first_few(labels: Sequence, limit: int = 5) -> str:
    """``a, b, c, ...``: the first ``limit`` labels of a list, for error messages."""
    shown = ", ".join(str(label) for label in labels[:limit])
    return shown + (", ..." if len(labels) > limit else "")


def check_finite_scores(sim: np.ndarray, readable_columns: np.ndarray | None = None) -> None:
    """Raise :class:`NonFiniteScoresError` naming how many texts (rows) and videos (columns) hold a NaN or
    inf score; columns outside ``readable_columns`` (unreadable videos) are not checked."""
    finite = np.isfinite(sim)
    if readable_columns is not None:
        finite |= ~readable_columns[None, :]
    if finite.all():
        return
    rows, columns = np.flatnonzero(~finite.all(axis=1)), np.flatnonzero(~finite.all(axis=0))
    raise NonFiniteScoresError(
        f"non-finite (NaN or inf) scores for {rows.size} of {sim.shape[0]} texts (rows {first_few(rows.tolist())}) and "
        f"{columns.size} of {sim.shape[1]} videos (columns {first_few(columns.tolist())}); no metric is computed from them"
    )


def summarize_ranks(ranks: np.ndarray, median: Median = "mean", ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    if ranks.size == 0:
        raise ValueError("no queries to evaluate")
    if np.isnan(ranks).any():
        raise NonFiniteScoresError(f"{int(np.isnan(ranks).sum())} of {ranks.size} ranks are NaN")

    def recall(k: int) -> float:  # same arithmetic as the references: count * 100 / n
        return float(np.sum(ranks <= k)) * 100 / ranks.size

    out = {f"R{k}": recall(k) for k in ks}
    if median == "mean":
        out["MdR"] = float(np.median(ranks))
    elif median == "lower":
        out["MdR"] = float(np.sort(ranks)[(ranks.size - 1) // 2])
    else:
        raise ValueError(f"median must be 'mean' or 'lower', got '{median}'")
    out["MnR"] = float(np.mean(ranks))
    out["RSum"] = recall(1) + recall(5) + recall(10)
    return out


def video_to_caption_group_scores(sim: np.ndarray, text_to_video: np.ndarray, num_videos: int) -> np.ndarray:
    """``M[v, g] = max_{text j of video g} sim[j, v]``: each video against each video's caption group."""
    counts = np.bincount(text_to_video, minlength=num_videos)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"videos without any caption cannot be evaluated video-to-text: columns {missing}")
    order = np.argsort(text_to_video, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = np.maximum.reduceat(sim[order], starts, axis=0)  # [groups, videos]
    return grouped.T


def retrieval_metrics(
    sim,
    text_to_video: Sequence[int] | np.ndarray | None = None,
    median: Median = "mean",
    t2v_median: Median | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    unreadable_videos: Sequence[int] | np.ndarray = (),
) -> dict[str, dict[str, float]]:
    """Metrics of a ``[Nt, Nv]`` text-by-video score matrix in both directions.

    ``text_to_video[i]`` is the column of text ``i``'s video; ``None`` means the square case with the
    ground truth on the diagonal. ``t2v_median`` overrides the median rule for text-to-video only
    (CLIP4Clip's multi-caption code uses ``"lower"`` there and ``"mean"`` for video-to-text).
    ``unreadable_videos`` are the columns of videos that could not be decoded: see the module docstring.
    """
    sim = _as_numpy(sim)
    num_texts, num_videos = sim.shape
    if text_to_video is None:
        if num_texts != num_videos:
            raise ValueError(f"a {num_texts}x{num_videos} matrix needs text_to_video (several captions per video)")
        text_to_video = np.arange(num_videos)
    text_to_video = np.asarray(text_to_video, dtype=np.int64)
    if text_to_video.shape != (num_texts,):
        raise ValueError(f"text_to_video has {text_to_video.shape[0]} entries for {num_texts} texts")
    if text_to_video.min() < 0 or text_to_video.max() >= num_videos:
        raise ValueError("text_to_video points outside the video columns")
    unreadable = np.zeros(num_videos, dtype=bool)
    unreadable[np.asarray(unreadable_videos, dtype=np.int64)] = True
    check_finite_scores(sim, ~unreadable)
    if unreadable.any():
        sim = sim.copy()
        sim[:, unreadable] = -np.inf  # below every real score: never a winning or tying distractor
    t2v_ranks = ground_truth_ranks(sim, text_to_video)
    t2v_ranks[unreadable[text_to_video]] = num_videos
    groups = video_to_caption_group_scores(sim, text_to_video, num_videos)
    v2t_ranks = ground_truth_ranks(groups, np.arange(num_videos))
    v2t_ranks[unreadable] = num_videos
    return {"t2v": summarize_ranks(t2v_ranks, t2v_median or median, ks), "v2t": summarize_ranks(v2t_ranks, median, ks)}
