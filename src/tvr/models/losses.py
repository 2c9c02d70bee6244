"""Contrastive losses over a text x video logit matrix with positives on the diagonal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


def _diagonal_ce(logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


@LOSSES.register("infonce")
class SymmetricInfoNCE(nn.Module):
    """``(CE(S) + CE(S^T)) / 2`` on ``S = exp(logit_scale) * sim`` (CLIP4Clip ``CrossEn``, X-Pool ``CLIPLoss``).

    Captions of the same video in one batch count as negatives, as in both references.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (_diagonal_ce(logits) + _diagonal_ce(logits.t())) / 2


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
        return _diagonal_ce(logits * prior)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (self._one_direction(logits) + self._one_direction(logits.t())) / 2


def create_loss(name: str, **kwargs) -> nn.Module:
    return LOSSES.create(name, **kwargs)
