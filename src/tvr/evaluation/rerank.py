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
