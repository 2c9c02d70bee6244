"""SK-norm (UCoFiA, Wang et al., ICCV 2023; methods spec §3.7): a Sinkhorn prior per score level.

For each score level of the head, a bank of training items is scored against the evaluated gallery with
the same head, and a few Sinkhorn-Knopp iterations over the bank's scores give every gallery item a log
prior (how over- or under-represented it is); the level's scores plus the prior are averaged over the
levels. For text-to-video the bank is training captions scored against the test videos and the prior is
per video; for video-to-text it is training videos scored against the test texts and the prior is per
text. No temperature: the levels enter as the head scores them. The prior of a test item is normalised
over the whole test gallery, so the method is transductive, and its rows are labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tvr.evaluation.rerank.base import QueryBankNeed, Reranker, as_levels, register_reranker
from tvr.options import option


@dataclass
class SinkhornPrior:
    """The outputs of ``sinkhorn_knopp(Q, iters)`` of the reference on a bank matrix ``Q [Nb, N]``."""

    bank_scaling: torch.Tensor  # a [Nb]
    gallery_scaling: torch.Tensor  # b [N]
    shift: torch.Tensor  # m = max(Q)
    prior: torch.Tensor  # log_softmax(log b - m) [N]


def sinkhorn_prior(bank: torch.Tensor, iters: int = 4) -> SinkhornPrior:
    """Alternating scalings of ``E = exp(Q - max Q)``: ``b = 1 / E.sum(0)``, then ``iters`` times
    ``a = 1 / (E b)``, ``b = 1 / (a E)``; the prior is ``log_softmax(log b - max Q)`` over the gallery.
    Computed in float64 (the scalings reach ~1e16 on logit-scaled levels)."""
    scores = bank.double()
    shift = scores.max()
    weights = (scores - shift).exp()
    gallery = 1.0 / weights.sum(dim=0)
    bank_scaling = torch.ones(scores.shape[0], dtype=scores.dtype, device=scores.device)
    for _ in range(iters):
        bank_scaling = 1.0 / (weights @ gallery)
        gallery = 1.0 / (bank_scaling @ weights)
    prior = torch.log_softmax(gallery.log() - shift, dim=0)
    return SinkhornPrior(bank_scaling, gallery, shift, prior)


@register_reranker("sknorm")
@dataclass(frozen=True)
class SKNorm(Reranker):
    level_aware: ClassVar[bool] = True

    iters: int = option(4, minimum=1, help="Sinkhorn-Knopp iterations over each level's bank scores")
    bank_split: str | None = option(
        None, help="the split whose captions (t2v bank) and videos (v2t bank) are scored; null: the training split"
    )
    bank_fraction: float = option(
        0.25,
        above=0,
        maximum=1,
        help="evenly spaced fraction of that split's caption rows in each bank (0.25: the reference's rank-0 "
        "quarter with 4 processes; 1.0: all)",
    )

    def query_bank(self) -> QueryBankNeed:
        return QueryBankNeed(self.bank_split, None, self.bank_fraction)

    def video_bank(self) -> QueryBankNeed:
        return QueryBankNeed(self.bank_split, None, self.bank_fraction)

    def priors(self, bank) -> dict[str, SinkhornPrior]:
        """The Sinkhorn prior of every level of a direction's bank (``[Nb, N]`` per level)."""
        return {level: sinkhorn_prior(scores, self.iters) for level, scores in as_levels(bank).items()}

    def rerank(self, cos, direction: str, query_bank=None) -> torch.Tensor:
        if query_bank is None:
            bank = "training captions (t2v)" if direction == "t2v" else "training videos (v2t)"
            raise ValueError(f"SK-norm needs its query bank of {bank} scored against the evaluated gallery")
        levels = as_levels(cos)
        priors = self.priors(query_bank)
        if priors.keys() != levels.keys():
            raise ValueError(f"SK-norm's bank has levels {sorted(priors)}, the scores {sorted(levels)}")
        axis = (None, slice(None)) if direction == "t2v" else (slice(None), None)  # per video | per text
        normalised = [scores.double() + priors[level].prior[axis] for level, scores in levels.items()]
        return torch.stack(normalised).mean(dim=0)

    def describe(self, query_bank=None) -> dict:
        size = None if query_bank is None else int(next(iter(as_levels(query_bank).values())).shape[0])
        return {"method": self.name, "iters": self.iters, "bank_fraction": self.bank_fraction, "bank_size": size}
