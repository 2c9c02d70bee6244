"""Dual softmax (DSL, CAMoE) at inference: divide each video's (or text's) popularity out of the scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tvr.evaluation.rerank.base import Reranker, register_reranker
from tvr.options import option


def dual_softmax(cos: torch.Tensor, temperature: float = 100.0, over: str = "texts") -> torch.Tensor:
    """DSL re-ranking: ``C'_tv = C_tv * softmax(temperature * C)`` taken over all texts for each video
    (``over="texts"``, for text-to-video) or over all videos for each text (``over="videos"``, for
    video-to-text). The whole 2-D matrix is normalised, not per caption slot (see spec §4.1)."""
    dim = {"texts": 0, "videos": 1}[over]
    return cos * torch.softmax(temperature * cos.double(), dim=dim).to(cos.dtype)


@register_reranker("dsl")
@dataclass(frozen=True)
class DualSoftmax(Reranker):
    temperature: float = option(100.0, above=0, help="the softmax's inverse temperature on cosines")

    def rerank(self, cos: torch.Tensor, direction: str, query_bank: torch.Tensor | None = None) -> torch.Tensor:
        return dual_softmax(cos, self.temperature, over="texts" if direction == "t2v" else "videos")
