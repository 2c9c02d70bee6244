"""Weighted token-wise interaction (WTI), HBI's similarity at every level (methods spec §3.3).

For a text's tokens ``x_t`` and a video's tokens ``y_v`` (unit-normalised), with token weights
``w^t = softmax_t(MLP_t(raw x))`` and ``w^v`` likewise::

    R[t, v] = <x_t, y_v>
    S = ( sum_t w^t_t max_v R[t, v]  +  sum_v w^v_v max_t R[t, v] ) / 2

With masks (the entity level only) the weight logits of padded tokens are set to ``-9e15`` before the
softmax, and ``R`` is multiplied by ``text_mask[t] * video_mask[v]``: padded cells become 0 and still take
part in the maxima, as in the reference.

The weights and the normalised tokens are per item, so a head computes them once in ``encode_*``; only
:func:`token_similarity_maps` and :func:`wti_scores` run per (text, video) pair, on tiles.
"""

from __future__ import annotations

import torch
from torch import nn

#: The reference's weight logit at padded tokens: finite, so a fully padded item gets uniform weights.
MASKED_LOGIT = -9e15


class WeightMLP(nn.Sequential):
    """``Linear(D, 2D) -> ReLU -> Linear(2D, 1)``: one weight logit per token, on the raw features.

    A ``Sequential`` so its keys are the reference's (``*.0.weight``, ``*.2.weight``)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, 1))
        for layer in (self[0], self[2]):
            nn.init.normal_(layer.weight, std=0.02)  # the reference's model-wide init pass
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, n, D]`` -> weight logits ``[N, n]``."""
        return super().forward(tokens).squeeze(-1)


def token_weights(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the tokens of each item; padded tokens (``mask == 0``) get the logit ``-9e15``."""
    if mask is not None:
        logits = logits.masked_fill(mask == 0, MASKED_LOGIT)
    return logits.softmax(dim=-1)


def pair_cell_mask(text_mask: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """``text_mask[b, t] * video_mask[b, v]`` ``[B, L, F]``: the real cells of the positive-pair maps."""
    return text_mask[:, :, None] * video_mask[:, None, :]


def token_similarity_maps(
    text_tokens: torch.Tensor,
    video_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``R [Nt, Nv, L, F]`` of every text against every video, from unit-normalised ``[Nt, L, D]`` and
    ``[Nv, F, D]`` tokens; with masks (given together), cells of padded tokens are 0."""
    maps = torch.einsum("atd,bvd->abtv", text_tokens, video_tokens)
    if text_mask is None:
        return maps
    return maps * text_mask.to(maps.dtype)[:, None, :, None] * video_mask.to(maps.dtype)[None, :, None, :]


def positive_pair_maps(
    text_tokens: torch.Tensor,
    video_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``R [B, L, F]`` of text b against video b only (the diagonal of :func:`token_similarity_maps`),
    the maps the Banzhaf losses read, without building the ``B x B`` pairs."""
    maps = torch.einsum("btd,bvd->btv", text_tokens, video_tokens)
    if text_mask is None:
        return maps
    return maps * pair_cell_mask(text_mask.to(maps.dtype), video_mask.to(maps.dtype))


def wti_scores(maps: torch.Tensor, text_weights: torch.Tensor, video_weights: torch.Tensor) -> torch.Tensor:
    """``S`` from maps ``[..., L, F]`` and weights broadcastable to ``[..., L]`` / ``[..., F]``."""
    text_to_video = (maps.amax(dim=-1) * text_weights).sum(dim=-1)
    video_to_text = (maps.amax(dim=-2) * video_weights).sum(dim=-1)
    return (text_to_video + video_to_text) / 2


def wti_similarity(
    text_tokens: torch.Tensor,
    video_tokens: torch.Tensor,
    text_weights: torch.Tensor,
    video_weights: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``S [Nt, Nv]`` of a tile of texts against a tile of videos (unit tokens, softmaxed weights).

    Holds one ``[Nt, Nv, L, F]`` map, so callers size their tiles by ``L * F`` per pair."""
    maps = token_similarity_maps(text_tokens, video_tokens, text_mask, video_mask)
    return wti_scores(maps, text_weights[:, None, :], video_weights[None, :, :])
