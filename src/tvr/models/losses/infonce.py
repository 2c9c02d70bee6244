"""Symmetric InfoNCE (CLIP4Clip's CrossEn, X-Pool's CLIPLoss)."""

from __future__ import annotations

import torch
from torch import nn

from tvr.models.losses.base import LOSSES, diagonal_cross_entropy


@LOSSES.register("infonce")
class SymmetricInfoNCE(nn.Module):
    """``(CE(S) + CE(S^T)) / 2`` on ``S = exp(logit_scale) * sim`` (CLIP4Clip ``CrossEn``, X-Pool ``CLIPLoss``).

    Captions of the same video in one batch count as negatives, as in both references.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (diagonal_cross_entropy(logits) + diagonal_cross_entropy(logits.t())) / 2
