"""Contrastive losses over a text x video logit matrix with positives on the diagonal.

Each loss is a module of this package registered with ``@LOSSES.register(name)``; its constructor's
arguments are its options (``loss.<option>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss", package="tvr.models.losses")


def diagonal_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against its diagonal entry (the positive pair)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


def create_loss(name: str, **kwargs) -> nn.Module:
    return LOSSES.create(name, **kwargs)
