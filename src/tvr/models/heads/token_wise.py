"""Token-wise interaction: the word x frame similarity of HBI's entity level, DRL's ``wti``/``ti`` and
DiffusionRet's first stage (methods specs: DRL §1.4, HBI §3.3). One module, so the three share one reading
of the equations and differ only in their declared options.

For a text's tokens ``x_t`` and a video's tokens ``y_v`` (unit-normalised) and per-token weights ``w^t``,
``w^v`` (each item's weights sum to 1)::

    R[t, v] = <x_t, y_v> * text_mask[t] * video_mask[v]
    t2v     = sum_t w^t_t max_v R[t, v]        v2t = sum_v w^v_v max_t R[t, v]
    S       = (t2v + v2t) / 2

WTI learns the weights: ``w = softmax(MLP(raw tokens))`` with padded tokens' logits set to a mask value
(:class:`WeightMLP`, :meth:`TokenWiseInteraction.weights`); TI uses uniform weights over the real tokens
(:func:`uniform_token_weights`). The options, and who uses which:

* the MLP's hidden widths: HBI and DiffusionRet ``D -> 2D -> 1``; DRL ``wti_arch`` 1 (``D -> 1``),
  2 (``D -> D -> 1``), 3 (``D -> D -> D -> 1``);
* ``mask_value``, the weight logit of padded tokens: ``-inf`` (DRL), ``-9e15`` (HBI, DiffusionRet). The two
  agree unless an item has no real token, where ``-inf`` would give NaN: such an item gets zero weights
  (it scores 0 against everything) and ``-9e15`` uniform weights over padding whose cells are all 0;
* ``padded_cells``: ``zero_in_max`` (every reference) keeps padded cells at 0 inside the maxima, so a token
  whose cosines with every real frame are negative takes 0 from a padded frame, and the argmax DRL's CDCR
  reads may point at a padded frame or position; ``exclude`` takes maxima and argmaxes over real cells only.

Weights and normalised tokens are per item, so a head computes them once in ``encode_*``; only the maps
and the maxima run per (text, video) pair, on tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

PADDED_CELLS = ("zero_in_max", "exclude")
#: HBI's and DiffusionRet's weight logit at padded tokens (DRL uses -inf).
HBI_MASK_VALUE = -9e15


class WeightMLP(nn.Sequential):
    """``Linear(D, h1) -> ReLU -> ... -> Linear(hn, 1)``: one weight logit per token, on the raw features;
    ``hidden=()`` is a single ``Linear(D, 1)``.

    A ``Sequential`` so its keys are the references' (``*.0.weight``, ``*.2.weight``, ``*.4.weight``)."""

    def __init__(self, dim: int, hidden: Sequence[int]) -> None:
        widths = [dim, *hidden, 1]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            if index:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Linear(width_in, width_out))
        super().__init__(*layers)
        for layer in self:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)  # the references' model-wide init pass
                nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, n, D]`` -> weight logits ``[N, n]``."""
        return super().forward(tokens).squeeze(-1)


def uniform_token_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """TI's weights ``mask / (number of real tokens)``; an item without a real token gets zeros."""
    mask = mask.to(dtype)
    return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)


def pair_cell_mask(text_mask: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """``text_mask[b, t] * video_mask[b, v]`` ``[B, L, F]``: the real cells of the positive-pair maps."""
    return text_mask[:, :, None] * video_mask[:, None, :]


def all_pairs_cell_mask(text_mask: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """``[Nt, Nv, L, F]`` real cells of every text against every video."""
    return text_mask[:, None, :, None] * video_mask[None, :, None, :]


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
    return maps * all_pairs_cell_mask(text_mask.to(maps.dtype), video_mask.to(maps.dtype))


def positive_pair_maps(
    text_tokens: torch.Tensor,
    video_tokens: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``R [B, L, F]`` of text b against video b only (the diagonal of :func:`token_similarity_maps`),
    without building the ``B x B`` pairs."""
    maps = torch.einsum("btd,bvd->btv", text_tokens, video_tokens)
    if text_mask is None:
        return maps
    return maps * pair_cell_mask(text_mask.to(maps.dtype), video_mask.to(maps.dtype))


@dataclass(frozen=True)
class BestMatches:
    """Each token's best cell: ``text_values``/``text_index`` ``[..., L]`` (max/argmax over frames),
    ``video_values``/``video_index`` ``[..., F]`` (over positions)."""

    text_values: torch.Tensor
    text_index: torch.Tensor
    video_values: torch.Tensor
    video_index: torch.Tensor


@dataclass(frozen=True)
class TokenWiseInteraction:
    """The rules of one token-wise interaction: the padded tokens' weight logit and how padded cells enter
    the maxima (module docstring). Stateless: the weight MLPs belong to the head that uses it."""

    mask_value: float = float("-inf")
    padded_cells: str = "zero_in_max"

    def __post_init__(self) -> None:
        if self.padded_cells not in PADDED_CELLS:
            raise ValueError(f"padded_cells must be one of {', '.join(PADDED_CELLS)}, got '{self.padded_cells}'")

    def weights(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over the tokens of each item, padded tokens (``mask == 0``) at :attr:`mask_value`."""
        if mask is None:
            return logits.softmax(dim=-1)
        real = mask != 0
        logits = logits.masked_fill(~real, self.mask_value)
        if math.isfinite(self.mask_value):
            return logits.softmax(dim=-1)
        # an item without a real token would be all -inf (NaN): zero weights, and no gradient into its logits
        empty = ~real.any(dim=-1, keepdim=True)
        return logits.masked_fill(empty, 0.0).softmax(dim=-1).masked_fill(empty, 0.0)

    def _excluding_padded(self, maps: torch.Tensor, cells: torch.Tensor | None) -> torch.Tensor:
        if self.padded_cells == "exclude" and cells is not None:
            return maps.masked_fill(cells == 0, float("-inf"))
        return maps

    def best_matches(self, maps: torch.Tensor, cells: torch.Tensor | None = None) -> BestMatches:
        """Max and argmax of maps ``[..., L, F]`` along each side (``torch.max``'s pick among ties, as the
        references); ``cells`` (broadcastable, 1 = real) is needed for ``padded_cells=exclude``."""
        maps = self._excluding_padded(maps, cells)
        text_values, text_index = maps.max(dim=-1)
        video_values, video_index = maps.max(dim=-2)
        return BestMatches(_finite(text_values), text_index, _finite(video_values), video_index)

    def halves(
        self,
        maps: torch.Tensor,
        text_weights: torch.Tensor,
        video_weights: torch.Tensor,
        cells: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t2v, v2t)`` from maps ``[..., L, F]`` and weights broadcastable to ``[..., L]`` / ``[..., F]``;
        ``cells`` as in :meth:`best_matches`."""
        maps = self._excluding_padded(maps, cells)
        text_to_video = (_finite(maps.amax(dim=-1)) * text_weights).sum(dim=-1)
        video_to_text = (_finite(maps.amax(dim=-2)) * video_weights).sum(dim=-1)
        return text_to_video, video_to_text

    def scores(
        self,
        maps: torch.Tensor,
        text_weights: torch.Tensor,
        video_weights: torch.Tensor,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``S = (t2v + v2t) / 2``."""
        text_to_video, video_to_text = self.halves(maps, text_weights, video_weights, cells)
        return (text_to_video + video_to_text) / 2

    def similarity(
        self,
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
        cells = all_pairs_cell_mask(text_mask, video_mask) if self.needs_cells and text_mask is not None else None
        return self.scores(maps, text_weights[:, None, :], video_weights[None, :, :], cells)

    def repr_similarity(self, text_repr: dict, video_repr: dict) -> torch.Tensor:
        """:meth:`similarity` of two head representations holding ``tokens``, ``weights`` and ``mask``."""
        return self.similarity(
            text_repr["tokens"],
            video_repr["tokens"],
            text_repr["weights"],
            video_repr["weights"],
            text_repr["mask"],
            video_repr["mask"],
        )

    @property
    def needs_cells(self) -> bool:
        """Whether the maxima need to know which cells are padded (``padded_cells=exclude``)."""
        return self.padded_cells == "exclude"


def _finite(maxima: torch.Tensor) -> torch.Tensor:
    """Maxima of rows without a real cell (``padded_cells=exclude``: all -inf) count 0, like a padded token's."""
    return maxima.masked_fill(maxima == float("-inf"), 0.0)
