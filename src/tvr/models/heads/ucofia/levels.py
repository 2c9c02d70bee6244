"""UCoFiA's score levels (methods spec §3.5) as functions of the per-item representations of a tile.

Interactive similarity aggregation (ISA) turns a vector of similarities into one score with learned
importance: ``ISA(x, W) = sum x * softmax((softmax(x / tau) @ W) / tau)`` along one axis, the softmaxed
axis contracted with the rows of the square ``W``. With a ``mask`` (the ``mask_padding`` option), masked
positions get no weight in either softmax; the reference masks nothing (Q5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def isa(scores: torch.Tensor, weight: torch.Tensor, dim: int, tau: float, mask: torch.Tensor | None = None):
    """ISA of ``scores`` along ``dim`` (``weight`` square, of that axis's size); ``mask`` (bool,
    broadcastable to ``scores``) True on the positions that take part."""
    values = scores.movedim(dim, -1)
    if mask is None:
        return (values * ((values / tau).softmax(dim=-1) @ weight / tau).softmax(dim=-1)).sum(dim=-1)
    keep = mask.expand_as(scores).movedim(dim, -1)
    lowest = torch.finfo(values.dtype).min  # finite: a fully masked row gets weights 0 and scores 0, not NaN

    def softmax(logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~keep, lowest).softmax(dim=-1) * keep

    return (values * softmax(softmax(values / tau) @ weight / tau)).sum(dim=-1)


@dataclass
class PatchWordParts:
    """The patch-word level and its intermediates (``t`` texts, ``l`` words, ``v`` videos, ``q`` tokens)."""

    alignment: torch.Tensor  # A [t, l, v, q]
    word_level: torch.Tensor  # [t, v, q]: ISA of A over words
    frame_level: torch.Tensor  # [t, l, v]: ISA of A over tokens
    sent2frame: torch.Tensor  # [t, v]: ISA of word_level over tokens
    video2word: torch.Tensor  # [t, v]: ISA of frame_level over words

    @property
    def score(self) -> torch.Tensor:
        return (self.sent2frame + self.video2word) / 2


def sentence_frame(
    sentences: torch.Tensor,
    frames: torch.Tensor,
    weight: torch.Tensor,
    tau: float,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[t, v]``: ISA over frames of ``<c_t, f_{v,f}>`` (unit sentences ``[t, D]``, unit frames ``[v, F, D]``)."""
    cosines = torch.einsum("td,vfd->tvf", sentences, frames)
    return isa(cosines, weight, -1, tau, None if frame_mask is None else frame_mask[None])


def patch_word(
    words: torch.Tensor,
    tokens: torch.Tensor,
    weights: dict[str, torch.Tensor],
    tau: float,
    word_mask: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> PatchWordParts:
    """``words [t, L, D]`` (already through ``W_l``) against ``tokens [v, P, D]`` (through ``W_l1`` where it
    is used); ``weights`` the four ISA matrices ``word``, ``pixel``, ``pixel2``, ``word2``. The masks (bool
    ``[t, L]``, ``[v, P]``) are given together or not at all."""
    alignment = torch.einsum("tld,vqd->tlvq", words, tokens)
    masked = word_mask is not None
    word_level = isa(alignment, weights["word"], 1, tau, word_mask[:, :, None, None] if masked else None)
    frame_level = isa(alignment, weights["pixel"], 3, tau, token_mask[None, None] if masked else None)
    return PatchWordParts(
        alignment=alignment,
        word_level=word_level,
        frame_level=frame_level,
        sent2frame=isa(word_level, weights["pixel2"], 2, tau, token_mask[None] if masked else None),
        video2word=isa(frame_level, weights["word2"], 1, tau, word_mask[:, :, None] if masked else None),
    )
