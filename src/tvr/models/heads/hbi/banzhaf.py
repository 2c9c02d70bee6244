"""Banzhaf interaction of (word, frame) pairs: the estimator network and its Monte-Carlo target
(methods spec §3.6).

Words and frames are the players of a cooperative game whose value is the WTI similarity a coalition
reaches; the Banzhaf interaction of word i and frame j is
``E_C[f(C + {i, j}) - f(C + {i}) - f(C + {j}) + f(C)]`` over random coalitions C of the other players.
:func:`banzhaf_interaction` estimates it by sampling, as the reference does to pre-train the estimator
(:class:`BanzhafModule`); during HBI training the frozen estimator is the teacher of one student
:class:`BanzhafModule` per level (:mod:`tvr.models.heads.hbi.losses`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.heads.hbi.wti import MASKED_LOGIT, wti_scores

#: The reference scales the similarity maps by 1000 before sampling, so targets (and a trained
#: estimator's outputs) live on that scale.
TARGET_SCALE = 1000.0


class BanzhafModule(nn.Module):
    """Maps a similarity map ``[B, 1, L, F]`` to a Banzhaf interaction map of the same shape::

        h = ReLU(Conv3x3(x));  z = h as L*F tokens;  h = h + softmax((zQ)(zK)^T) (zV);  y = Conv3x3(h)

    single-head attention with no ``1/sqrt(d)`` scaling, as the reference. ``bn`` is never used: it
    exists so the reference's state_dicts load strictly.
    """

    def __init__(self, planes: int = 64) -> None:
        super().__init__()
        self.Q = nn.Parameter(torch.empty(planes, planes))
        self.K = nn.Parameter(torch.empty(planes, planes))
        self.V = nn.Parameter(torch.empty(planes, planes))
        self.cnn1 = nn.Conv2d(1, planes, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(planes)
        self.bn.requires_grad_(False)  # unused: no optimiser state for it, no unused-parameter error under DDP
        self.cnn2 = nn.Conv2d(planes, 1, kernel_size=3, padding=1)
        for matrix in (self.Q, self.K, self.V):
            nn.init.xavier_uniform_(matrix, gain=1.414)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.cnn1(maps))
        cells = hidden.flatten(2).transpose(1, 2)  # [B, L*F, planes]
        attention = ((cells @ self.Q) @ (cells @ self.K).transpose(1, 2)).softmax(dim=-1)
        hidden = hidden + (attention @ (cells @ self.V)).transpose(1, 2).reshape(hidden.shape)
        return self.cnn2(hidden)


def _coalition_weights(weights: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """The reference re-softmaxes the (already softmaxed) weights over the coalition's members."""
    return weights.masked_fill(~members, MASKED_LOGIT).softmax(dim=-1)


def _coalition_value(
    maps: torch.Tensor,
    words: torch.Tensor,
    frames: torch.Tensor,
    text_weights: torch.Tensor,
    video_weights: torch.Tensor,
) -> torch.Tensor:
    """WTI of the coalition: cells outside ``words x frames`` are zeroed (and still take part in the max)."""
    kept = maps * (words[..., :, None] & frames[..., None, :])
    return wti_scores(kept, _coalition_weights(text_weights, words), _coalition_weights(video_weights, frames))


def _with_player_weight(
    coalition_weights: torch.Tensor, members: torch.Tensor, weights: torch.Tensor, player: int
) -> torch.Tensor:
    """v1's weights: the coalition's softmaxed weights, re-masked, entry ``player`` set back to its
    original weight, softmaxed once more."""
    logits = coalition_weights.masked_fill(~members, MASKED_LOGIT)
    logits[..., player] = weights[..., player]
    return logits.softmax(dim=-1)


def _pair_interaction(
    maps: torch.Tensor,
    words: torch.Tensor,
    frames: torch.Tensor,
    text_weights: torch.Tensor,
    video_weights: torch.Tensor,
    i: int,
    j: int,
) -> torch.Tensor:
    """``v1 - v2 - v3 + v4`` of word i and frame j for coalitions ``[S, B, L]`` / ``[S, B, F]`` that
    exclude them, with the reference's definitions: v4 = f(C), v2 = f(C + word i), v3 = f(C + frame j),
    and v1 restores, on top of C, only the cell (i, j) of the map (not row i and column j)."""
    with_word, with_frame = words.clone(), frames.clone()
    with_word[..., i] = True
    with_frame[..., j] = True
    v2 = _coalition_value(maps, with_word, frames, text_weights, video_weights)
    v3 = _coalition_value(maps, words, with_frame, text_weights, video_weights)

    kept = maps * (words[..., :, None] & frames[..., None, :])
    coalition_text, coalition_video = _coalition_weights(text_weights, words), _coalition_weights(video_weights, frames)
    v4 = wti_scores(kept, coalition_text, coalition_video)
    kept[..., i, j] = maps[..., i, j]
    v1 = wti_scores(
        kept,
        _with_player_weight(coalition_text, words, text_weights, i),
        _with_player_weight(coalition_video, frames, video_weights, j),
    )
    return v1 - v2 - v3 + v4


def _draw_coalitions(
    num_samples: int, text_mask: torch.Tensor, video_mask: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` random coalitions (each player kept with probability 1/2): ``[S, B, L]``, ``[S, B, F]``.

    One draw in the reference's order (per sample: the words of every item, then the frames), so a CPU
    generator seeded as the reference's global RNG yields its exact coalitions; float32 as the
    reference draws in the default dtype."""
    batch, words = text_mask.shape
    frames = video_mask.shape[1]
    device = generator.device if generator is not None else text_mask.device
    draws = torch.rand(num_samples, batch * (words + frames), generator=generator, dtype=torch.float32, device=device)
    draws = draws.to(text_mask.device) > 0.5
    return draws[:, : batch * words].view(num_samples, batch, words), draws[:, batch * words :].view(
        num_samples, batch, frames
    )


@torch.no_grad()
def banzhaf_interaction(
    maps: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weights: torch.Tensor,
    video_weights: torch.Tensor,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
    coalitions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Monte-Carlo Banzhaf interaction ``[B, L, F]`` (x1000 scale) of every word-frame pair of the
    positive-pair maps ``[B, L, F]`` (masked), given the masks and the *softmaxed* WTI weights.

    For every pair (i, j) in turn, ``num_samples`` coalitions are drawn (vectorised over samples) and
    their interactions averaged; padded pairs are 0. Costs ``L * F * num_samples`` WTI evaluations.
    ``coalitions`` replaces the draws with given ones (e.g. recorded from the reference): the kept words
    ``[L, F, S, B, L]`` and frames ``[L, F, S, B, F]`` of each pair's S samples (S then replaces
    ``num_samples``), before the pair's own players and the padding are removed.
    """
    maps = maps * TARGET_SCALE
    text_mask, video_mask = text_mask.bool(), video_mask.bool()
    target = torch.zeros_like(maps)
    for i in range(maps.shape[1]):
        for j in range(maps.shape[2]):
            if coalitions is None:
                words, frames = _draw_coalitions(num_samples, text_mask, video_mask, generator)
            else:
                words, frames = coalitions[0][i, j], coalitions[1][i, j]
            words, frames = words.to(text_mask.device) & text_mask, frames.to(video_mask.device) & video_mask
            words[..., i] = False
            frames[..., j] = False
            target[:, i, j] = _pair_interaction(maps, words, frames, text_weights, video_weights, i, j).mean(dim=0)
    return target * (text_mask[:, :, None] & video_mask[:, None, :])
