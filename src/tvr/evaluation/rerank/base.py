"""Inference-time re-ranking (methods spec §4): registered components, one module each.

A re-ranker is a dataclass whose fields are its options (config block ``evaluation.<name>``, validated at
start-up from the declaration) registered with ``@RERANKERS.register(name)``. It re-scores the *cosine*
matrix ``C [Nt, Nv]`` (texts x videos, readable videos only), one direction at a time, and says which data
beyond the evaluated split it needs: captions of another split scored against the evaluated videos
(:meth:`Reranker.query_bank`, the text-to-video bank ``[Nb, Nv]``) and videos of another split scored
against the evaluated texts (:meth:`Reranker.video_bank`, the video-to-text bank, passed as ``[Nb, Nt]``).
A *level-aware* re-ranker (:attr:`Reranker.level_aware`, SK-norm) reads every score level of a head that
scores at several (``{level: [Nt, Nv]}``, banks likewise) instead of the final matrix alone; start-up
validation refuses it with a head that has no levels. Every re-ranker seen so far is
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
    """Items of another split scored against the evaluated gallery: ``split`` (None: the training split), at
    most ``size`` of its caption rows, or the ``fraction`` of them, evenly spaced (the captions themselves
    for a query bank, the video of each row for a video bank)."""

    split: str | None
    size: int | None
    fraction: float = 1.0


def as_levels(scores) -> dict[str, torch.Tensor]:
    """A level-aware re-ranker's input as ``{level: matrix}``; a plain matrix is one level, ``final``."""
    return dict(scores) if isinstance(scores, dict) else {"final": scores}


@dataclass(frozen=True)
class Reranker:
    name: ClassVar[str]
    #: the directions it re-ranks; the others are reported as not re-ranked, with :attr:`why_not`
    directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    why_not: ClassVar[str] = ""
    #: reads every score level of the head (``{level: [Nt, Nv]}``, banks alike), not only the final matrix
    level_aware: ClassVar[bool] = False

    def query_bank(self) -> QueryBankNeed | None:
        """The captions this re-ranker scores against the evaluated videos, if any (the data module loads them)."""
        return None

    def video_bank(self) -> QueryBankNeed | None:
        """The videos this re-ranker scores against the evaluated texts, if any (the data module loads them)."""
        return None

    def rerank(self, cos: torch.Tensor, direction: str, query_bank: torch.Tensor | None = None) -> torch.Tensor:
        """Re-scored ``[Nt, Nv]`` matrix for ``direction``; ``query_bank`` is that direction's bank when one is
        declared: ``[Nb, Nv]`` captions x videos for ``t2v`` (:meth:`query_bank`), ``[Nb, Nt]`` videos x texts
        for ``v2t`` (:meth:`video_bank`). A level-aware re-ranker gets ``{level: matrix}`` for both."""
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
