"""Score every text against every video through a head, tile by tile.

Peak extra memory is what the head builds for one ``text_chunk x video_chunk`` tile (``head.pair_bytes()``
per pair; the video chunk shrinks to fit ``memory_budget_bytes``), never ``Nt x Nv x D``. The result is
the ``[Nt, Nv]`` matrix itself, on ``out_device``.
"""

from __future__ import annotations

import torch

from tvr.models.heads.base import Repr, RetrievalHead, repr_length, slice_repr


def tile_shape(
    head: RetrievalHead, text_chunk: int, video_chunk: int, memory_budget_bytes: int | None
) -> tuple[int, int]:
    per_pair = head.pair_bytes()
    if per_pair and memory_budget_bytes:
        pairs = max(1, memory_budget_bytes // per_pair)
        text_chunk = max(1, min(text_chunk, pairs))
        video_chunk = max(1, min(video_chunk, pairs // text_chunk))
    return text_chunk, video_chunk


@torch.no_grad()
def tiled_similarity(
    head: RetrievalHead,
    text_repr: Repr,
    video_repr: Repr,
    text_chunk: int = 1024,
    video_chunk: int = 1024,
    memory_budget_bytes: int | None = 512 * 2**20,
    out_device: torch.device | str = "cpu",
    levels: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The ``[Nt, Nv]`` ranking scores (``head.similarity``); with ``levels``, ``{level: [Nt, Nv]}`` of every
    score level of a multi-level head (``head.level_similarity``; empty for others)."""
    if levels:
        return _tiled(
            head.level_similarity, head, text_repr, video_repr, text_chunk, video_chunk, memory_budget_bytes, out_device
        )
    scores = _tiled(
        lambda texts, videos: {"final": head.similarity(texts, videos)},
        head,
        text_repr,
        video_repr,
        text_chunk,
        video_chunk,
        memory_budget_bytes,
        out_device,
    )
    return scores["final"]


def _tiled(
    score_tile,
    head: RetrievalHead,
    text_repr: Repr,
    video_repr: Repr,
    text_chunk: int,
    video_chunk: int,
    memory_budget_bytes: int | None,
    out_device,
) -> dict[str, torch.Tensor]:
    num_texts, num_videos = repr_length(text_repr), repr_length(video_repr)
    text_chunk, video_chunk = tile_shape(head, text_chunk, video_chunk, memory_budget_bytes)
    out: dict[str, torch.Tensor] = {}
    for t0 in range(0, num_texts, text_chunk):
        texts = slice_repr(text_repr, t0, t0 + text_chunk)
        for v0 in range(0, num_videos, video_chunk):
            for name, tile in score_tile(texts, slice_repr(video_repr, v0, v0 + video_chunk)).items():
                if name not in out:
                    out[name] = torch.empty(num_texts, num_videos, dtype=torch.float32, device=out_device)
                out[name][t0 : t0 + text_chunk, v0 : v0 + video_chunk] = tile.float().to(out_device)
    return out
