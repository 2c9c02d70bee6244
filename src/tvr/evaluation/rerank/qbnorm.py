"""QB-Norm (Bogolin et al., CVPR 2022): querybank normalisation with the dynamic inverted softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tvr.evaluation.rerank.base import QueryBankNeed, Reranker, register_reranker
from tvr.options import option


def qb_norm(cos: torch.Tensor, bank: torch.Tensor, k: int = 1, beta: float = 20.0) -> torch.Tensor:
    """QB-Norm's dynamic inverted softmax for text-to-video.

    ``bank [Nb, Nv]`` scores a query bank (by default the training captions) against the same gallery.
    Rows of ``cos`` whose top video is "activated" (in some bank query's top-k) are replaced by
    ``log(exp(beta * C_iv) / sum_b exp(beta * Q_bv)) = beta * C_iv - logsumexp_b(beta * Q_bv)``; other
    rows are left as they are. The log of QB-Norm's score ranks identically (rows are ranked
    independently) and, unlike the score itself, can neither overflow nor underflow — ``exp(20 * C)``
    does both on logit-scaled inputs. Returned in float64.
    """
    cos64, bank64 = cos.double(), bank.double()
    activated = torch.zeros(cos.shape[1], dtype=torch.bool, device=cos.device)
    activated[bank64.topk(k, dim=1).indices.flatten()] = True
    log_normaliser = torch.logsumexp(beta * bank64, dim=0)  # [Nv]
    log_scores = beta * cos64 - log_normaliser
    use = activated[cos64.argmax(dim=1)]
    return torch.where(use[:, None], log_scores, cos64)


@register_reranker("qbnorm")
@dataclass(frozen=True)
class QBNorm(Reranker):
    directions: ClassVar[tuple[str, ...]] = ("t2v",)
    why_not: ClassVar[str] = "QB-Norm is a text-to-video method"

    k: int = option(1, minimum=1, help="a bank query activates the videos in its top k")
    beta: float = option(20.0, above=0, help="inverse temperature of the inverted softmax")
    bank_split: str | None = option(None, help="the split whose captions form the bank; null: the training split")
    bank_size: int | None = option(5000, minimum=1, help="evenly spaced captions of that split; null: all")

    def query_bank(self) -> QueryBankNeed:
        return QueryBankNeed(self.bank_split, self.bank_size)

    def rerank(self, cos: torch.Tensor, direction: str, query_bank: torch.Tensor | None = None) -> torch.Tensor:
        if query_bank is None:
            raise ValueError("QB-Norm needs a query bank (training captions scored against the gallery)")
        return qb_norm(cos, query_bank, k=self.k, beta=self.beta)

    def describe(self, query_bank: torch.Tensor | None = None) -> dict:
        size = None if query_bank is None else int(query_bank.shape[0])
        return {"method": self.name, "k": self.k, "beta": self.beta, "bank_size": size}
