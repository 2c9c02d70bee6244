"""CAMoE's dual-softmax training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.losses.base import LOSSES, diagonal_cross_entropy


@LOSSES.register("dual_softmax")
class DualSoftmaxLoss(nn.Module):
    """CAMoE's DSL training loss: reweight each logit by a column-wise softmax prior, then InfoNCE.

    ``S' = S * softmax_dim0(S / T) * B`` with ``T = 1000`` in the reference; applied to ``S`` and ``S^T``.
    """

    def __init__(self, temperature: float = 1000.0) -> None:
        super().__init__()
        self.temperature = temperature

    def _one_direction(self, logits: torch.Tensor) -> torch.Tensor:
        prior = F.softmax(logits / self.temperature, dim=0) * logits.shape[0]
        return diagonal_cross_entropy(logits * prior)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (self._one_direction(logits) + self._one_direction(logits.t())) / 2
