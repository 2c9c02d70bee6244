"""Score every text against every video through a head, tile by tile.

Peak extra memory is one ``text_chunk x video_chunk`` tile of whatever the head builds for it, never
``Nt x Nv x D``; the result is the ``[Nt, Nv]`` matrix itself (on ``out_device``).
"""

from __future__ import annotations

import torch

from tvr.models.heads.base import Repr, RetrievalHead, repr_length, slice_repr


@torch.no_grad()
def tiled_similarity(
    head: RetrievalHead,
    text_repr: Repr,
    video_repr: Repr,
    text_chunk: int = 1024,
    video_chunk: int = 1024,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    num_texts, num_videos = repr_length(text_repr), repr_length(video_repr)
    out = torch.empty(num_texts, num_videos, dtype=torch.float32, device=out_device)
    for t0 in range(0, num_texts, text_chunk):
        texts = slice_repr(text_repr, t0, t0 + text_chunk)
        for v0 in range(0, num_videos, video_chunk):
            tile = head.similarity(texts, slice_repr(video_repr, v0, v0 + video_chunk))
            out[t0 : t0 + text_chunk, v0 : v0 + video_chunk] = tile.float().to(out_device)
    return out
