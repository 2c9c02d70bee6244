"""Retrieval heads, one file per method, registered by name (the registry imports this package's modules).

>>> from tvr.models.heads import create_head, list_heads
>>> head = create_head("seqtransf", embed_dim=512, layers=4)
"""

from __future__ import annotations

from tvr.models.heads.base import Repr, RetrievalHead
from tvr.models.heads.registry import HEADS


def create_head(name: str, **cfg) -> RetrievalHead:
    return HEADS.create(name, **cfg)


def list_heads() -> list[str]:
    return HEADS.names()


__all__ = ["HEADS", "Repr", "RetrievalHead", "create_head", "list_heads"]
