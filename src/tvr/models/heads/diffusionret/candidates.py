"""In-batch candidate mining for DiffusionRet's generation stage (methods spec §4.4, quirks Q2, Q3).

Each query of the global batch gets its positive first, then the ``num`` hardest other items by the detached
stage-1 matrix: ``W = softmax_row(S)`` (``Sᵀ`` for v2t), ``W[same video] = −1``, ``[i] ++ topk(W[i], num,
sorted=True)``. The softmax at temperature 1 only orders the row; the ``−1`` only pushes same-video items
(the positive included) behind every other item.
"""

from __future__ import annotations

import torch

DUPLICATE_POLICIES = ("topk_tie", "drop")
#: The reference's weight for same-video items: below every softmax weight, but still selectable.
SAME_VIDEO_WEIGHT = -1.0


def same_video_pairs(video_ids: torch.Tensor, ranks: int = 1, rank_local: bool = True) -> torch.Tensor:
    """``M [B, B]``, True where items ``i`` and ``j`` show the same video (the diagonal always).

    ``rank_local`` reproduces the reference (quirk Q2): its ids are per-process ``hash()`` values, so only pairs
    inside the same rank's contiguous ``B / ranks`` block of the all-gathered batch are recognised. With
    ``rank_local=False`` (or one rank) every same-video pair is."""
    if video_ids.dim() != 1:
        raise ValueError(f"video_ids must be 1-D [B], got shape {list(video_ids.shape)}")
    batch = video_ids.shape[0]
    if ranks < 1 or batch % ranks:
        raise ValueError(f"the global batch ({batch}) must split evenly over the ranks ({ranks})")
    pairs = video_ids[:, None] == video_ids[None, :]
    if rank_local and ranks > 1:
        rank = torch.arange(batch, device=video_ids.device) // (batch // ranks)
        pairs &= rank[:, None] == rank[None, :]
    return pairs | torch.eye(batch, dtype=torch.bool, device=video_ids.device)


def mine_candidates(
    scores: torch.Tensor, same_video: torch.Tensor, num: int, duplicate_policy: str = "topk_tie"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t2v, v2t)`` candidate lists ``[B, 1 + num]``: column 0 the query's own pair, then the ``num`` hardest
    items of ``scores [B, B]`` (texts x videos) by decreasing softmax weight, for t2v along rows, for v2t along
    the columns.

    ``duplicate_policy``: ``topk_tie`` is the reference (Q3): same-video items (the positive included) weigh
    ``−1`` and are still taken when fewer than ``num`` other items exist, in ``topk``'s tie order. ``drop`` never
    lists a same-video item among the negatives and refuses a ``num`` that would need one (every softmax weight
    is above ``−1``, so below that ``num`` both policies take the same, hardest, other-video items)."""
    if duplicate_policy not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicate_policy must be one of {', '.join(DUPLICATE_POLICIES)}, got '{duplicate_policy}'")
    batch = scores.shape[0]
    if scores.shape != (batch, batch) or same_video.shape != (batch, batch):
        raise ValueError(
            f"scores and same_video must be square [B, B], got {list(scores.shape)}, {list(same_video.shape)}"
        )
    if not 1 <= num <= batch - 1:
        raise ValueError(f"num ({num}) must lie in [1, B - 1] for a global batch of B = {batch}")
    if duplicate_policy == "drop":
        others = int((~same_video).sum(dim=1).min())
        if others < num:
            raise ValueError(
                f"duplicate_policy=drop needs num ({num}) other-video items per query, but a query of this batch "
                f"has only {others}: lower num or use a batch with fewer repeated videos"
            )
    positives = torch.arange(batch, device=scores.device)[:, None]
    lists = []
    for oriented, pairs in ((scores, same_video), (scores.T, same_video.T)):
        weights = oriented.detach().softmax(dim=1).masked_fill(pairs, SAME_VIDEO_WEIGHT)
        lists.append(torch.cat([positives, weights.topk(num, dim=1, sorted=True).indices], dim=1))
    return lists[0], lists[1]
