"""Contrastive losses, one module each, registered by name (see :mod:`tvr.models.losses.base`)."""

from tvr.models.losses.base import LOSSES, create_loss, diagonal_cross_entropy

__all__ = ["LOSSES", "create_loss", "diagonal_cross_entropy"]
