"""Inference-time re-ranking (methods spec §4): registered components, one module each.

A re-ranker is a dataclass whose fields are its options (config block ``evaluation.<name>``, validated at
start-up from the declaration) registered with ``@RERANKERS.register(name)``. It re-scores the *cosine*
matrix ``C [Nt, Nv]`` (texts x videos, readable videos only), one direction at a time, and says which data
beyond the evaluated split it needs (:meth:`Reranker.query_bank`). Every re-ranker seen so far is
transductive, so its results are always labelled with its name and reported beside the plain ones, never
instead of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from tvr.registry import Registry

RERANKERS: Registry["Reranker"] = Registry("re-ranker", package="tvr.evaluation.rerank")
DIRECTIONS = ("t2v", "v2t")


@dataclass(frozen=True)
class QueryBankNeed:
    """Other captions scored against the evaluated gallery: ``split`` (None: the training split), at most
    ``size`` of them, evenly spaced."""

    split: str | None
    size: int | None


@dataclass(frozen=True)
class Reranker:
    name: ClassVar[str]
    #: the directions it re-ranks; the others are reported as not re-ranked, with :attr:`why_not`
    directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    why_not: ClassVar[str] = ""

    def query_bank(self) -> QueryBankNeed | None:
        """The query bank this re-ranker reads, if any (the data module then loads it)."""
        return None

    def rerank(self, cos: torch.Tensor, direction: str, query_bank: torch.Tensor | None = None) -> torch.Tensor:
        """Re-scored ``[Nt, Nv]`` matrix for ``direction``; ``query_bank`` ``[Nb, Nv]`` when :meth:`query_bank` asks."""
        raise NotImplementedError

    def describe(self, query_bank: torch.Tensor | None = None) -> dict:
        """The label written beside the re-ranked numbers: name and options (and the bank's real size)."""
        return {"method": self.name, **dataclasses.asdict(self)}


def register_reranker(name: str):
    def decorator(cls):
        cls.name = name
        return RERANKERS.register(name)(cls)

    return decorator


def create_reranker(name: str, **options) -> Reranker:
    return RERANKERS.create(name, **options)
