"""Inference-time re-ranking (methods spec §4). Both are transductive, so every result that uses one
is labelled with its name; plain results never pass through here.

Both operate on the *cosine* matrix ``C [Nt, Nv]`` (texts x videos), not on logit-scaled scores.
"""

from __future__ import annotations

import torch

RERANKERS = ("none", "dsl", "qbnorm")


def dual_softmax(cos: torch.Tensor, temperature: float = 100.0, over: str = "texts") -> torch.Tensor:
    """DSL re-ranking: ``C'_tv = C_tv * softmax(temperature * C)`` taken over all texts for each video
    (``over="texts"``, for text-to-video) or over all videos for each text (``over="videos"``, for
    video-to-text). The whole 2-D matrix is normalised, not per caption slot (see spec §4.1)."""
    dim = {"texts": 0, "videos": 1}[over]
    return cos * torch.softmax(temperature * cos.double(), dim=dim).to(cos.dtype)


def qb_norm(cos: torch.Tensor, bank: torch.Tensor, k: int = 1, beta: float = 20.0) -> torch.Tensor:
    """QB-Norm's dynamic inverted softmax for text-to-video.

    ``bank [Nb, Nv]`` scores a query bank (by default the training captions) against the same gallery.
    Rows of ``cos`` whose top video is "activated" (in some bank query's top-k) become
    ``exp(beta * C_iv) / sum_b exp(beta * Q_bv)``; other rows are left as they are. Computed in float64
    with a shared shift, which leaves each row's ranking unchanged and cannot overflow.
    """
    cos64, bank64 = cos.double(), bank.double()
    activated = torch.zeros(cos.shape[1], dtype=torch.bool, device=cos.device)
    activated[bank64.topk(k, dim=1).indices.flatten()] = True
    shift = torch.maximum(cos64.max(), bank64.max()) * beta
    log_normaliser = torch.logsumexp(beta * bank64 - shift, dim=0)  # [Nv]
    normalised = torch.exp(beta * cos64 - shift - log_normaliser)
    use = activated[cos64.argmax(dim=1)]
    return torch.where(use[:, None], normalised, cos64).to(cos.dtype)
