"""HBI's token merge module: CTM (DPC-KNN clustering + weighted merge) then TCBlock (methods spec §3.4).

One merge turns a level's tokens ``[B, N, D]`` into the next level's ``[B, ceil(N * rate), D]``:
entity (words / frames) -> action (phrases / clips) -> event. Text and video each have their own merges.

CTM: ``x <- LN(x + Conv1d(x))``, a score per token, DPC-KNN centres on ``x`` (without gradient), each
cluster the ``exp(score)``-weighted mean of its tokens. TCBlock: the cluster features attend to the
tokens they came from, the token scores acting as an additive key bias.

Only the entity level has padding: its mask sets padded scores to ``-inf`` (zero merge weight, never
attended to) and keeps padded tokens out of the clustering. Merged tokens are all real, so later
levels run without a mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: Added to each cluster's total weight, as in the reference: a cluster of padded tokens only (a caption
#: with fewer real tokens than clusters) has total weight 0 and merges to the zero vector, not NaN.
MERGE_EPS = 1e-6
#: Scale of the uniform noise that breaks exact density ties, as in the reference.
DENSITY_NOISE = 1e-6


class ClusteredTokens(NamedTuple):
    """What CTM hands to TCBlock (and what parity tests compare)."""

    tokens: torch.Tensor  # [B, N, D] the input tokens after the residual conv and LayerNorm
    scores: torch.Tensor  # [B, N] merge score logits, -inf at padded tokens
    merged: torch.Tensor  # [B, C, D] cluster features
    cluster_ids: torch.Tensor  # [B, N] cluster of every token (ids in the order the centres were picked)


def _density_noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``U[0, 1)`` draws of ``like``'s dtype; drawn on the generator's device, so a CPU generator can
    seed the noise of a model on the GPU (and reproduce the reference's CPU draws exactly)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


@torch.no_grad()
def dpc_knn_clusters(
    tokens: torch.Tensor,
    cluster_num: int,
    k: int = 3,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    density_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cluster ids ``[B, N]`` of DPC-KNN (density peaks clustering with k-nearest-neighbour densities).

    Centres are the tokens of highest ``density * distance to the nearest denser token``; every other
    token joins its nearest centre. Distances *to* padded tokens are the batch's largest distance + 1
    (the reference's choice: the maximum over the whole batch, not per item), and padded tokens have
    density 0, so they are centres only when an item has fewer real tokens than clusters.

    The tie-breaking noise is ``density_noise`` (``U[0, 1)`` draws ``[B, N]``) when given, so that draws
    recorded from the reference can be replayed; else drawn from ``generator``.
    """
    batch, num_tokens, dim = tokens.shape
    dist = torch.cdist(tokens, tokens) / math.sqrt(dim)
    if mask is not None:
        dist = dist.masked_fill(mask[:, None, :] == 0, dist.max() + 1)

    # includes the token itself; fewer tokens than k (a 2-token action level of an 8-frame video) use them all
    nearest = dist.topk(min(k, num_tokens), dim=-1, largest=False).values
    density = (-nearest.square().mean(dim=-1)).exp()
    if density_noise is None:
        density_noise = _density_noise(density.shape, density, generator)
    density = density + density_noise.to(density) * DENSITY_NOISE
    if mask is not None:
        density = density * mask.to(density.dtype)

    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: token j is denser than token i
    item_max = dist.flatten(1).amax(dim=-1)[:, None, None]
    to_denser = torch.where(denser, dist, item_max).amin(dim=-1)  # the densest token gets the item's max
    centres = (to_denser * density).topk(cluster_num, dim=-1).indices  # [B, C]

    cluster_ids = dist.gather(1, centres[:, :, None].expand(-1, -1, num_tokens)).argmin(dim=1)
    # a centre joins its own cluster even when it ties with (or, for padding, is farther than) another
    cluster_ids.scatter_(1, centres, torch.arange(cluster_num, device=tokens.device).expand(batch, -1))
    return cluster_ids


def cluster_shares(weights: torch.Tensor, cluster_ids: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """Each token's share ``w_i / (sum_{j in c(i)} w_j + 1e-6)`` of its cluster ``[B, N]``: the factor it
    is merged with (the reference's ``norm_weight``, from which it also keeps its ``agg_weight``)."""
    totals = weights.new_zeros(weights.shape[0], cluster_num).scatter_add(1, cluster_ids, weights)
    return weights / (totals.gather(1, cluster_ids) + MERGE_EPS)


def merge_clusters(
    tokens: torch.Tensor, weights: torch.Tensor, cluster_ids: torch.Tensor, cluster_num: int
) -> torch.Tensor:
    """``x'_c = sum_{i in c} w_i x_i / (sum_{i in c} w_i + 1e-6)`` ``[B, C, D]``; differentiable in
    ``tokens`` and ``weights``."""
    normalised = cluster_shares(weights, cluster_ids, cluster_num)
    index = cluster_ids[:, :, None].expand_as(tokens)
    return tokens.new_zeros(tokens.shape[0], cluster_num, tokens.shape[2]).scatter_add(
        1, index, normalised[:, :, None] * tokens
    )


class TokenConv(nn.Module):
    """``x + Conv1d(x)`` along the tokens (kernel 3, no bias); padded neighbours are mixed in too."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.conv(tokens.transpose(1, 2)).transpose(1, 2)


class CTM(nn.Module):
    """Clustering-based token merge to ``max(ceil(N * rate), 1)`` tokens. Keeps PyTorch's default init,
    as the reference builds it after its model-wide init pass."""

    def __init__(self, dim: int, rate: float, k: int = 3) -> None:
        super().__init__()
        self.rate, self.k = rate, k
        self.conv = TokenConv(dim)
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)

    def cluster_num(self, num_tokens: int) -> int:
        return max(math.ceil(num_tokens * self.rate), 1)

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        density_noise: torch.Tensor | None = None,
    ) -> ClusteredTokens:
        tokens = self.norm(self.conv(tokens))
        scores = self.score(tokens).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        cluster_num = self.cluster_num(tokens.shape[1])
        cluster_ids = dpc_knn_clusters(tokens, cluster_num, self.k, mask, generator, density_noise)
        merged = merge_clusters(tokens, scores.exp(), cluster_ids, cluster_num)
        return ClusteredTokens(tokens, scores, merged, cluster_ids)


class TokenAttention(nn.Module):
    """Multi-head attention of cluster features (queries) over tokens (keys/values) with an additive key
    bias; the reference's ``TCAttention`` (its keys: ``q``, ``kv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TCBlock num_heads={num_heads} must divide the width {dim}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, n, D] -> [B, H, n, D/H]

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        keys, values = self.kv(tokens).chunk(2, dim=-1)
        # -inf (padded keys) becomes the dtype's minimum: identical weights whenever an item has a real
        # token, and uniform rather than NaN attention for an item with none (a video with no frame)
        bias = key_bias.clamp(min=torch.finfo(key_bias.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._split_heads(self.q(queries)), self._split_heads(keys), self._split_heads(values), attn_mask=bias
        )
        return self.proj(out.transpose(1, 2).flatten(2))


class TCBlock(nn.Module):
    """``x' + Attention(LN(x'), LN(tokens), bias = token scores)``: the reference's TCBlock, whose MLP is
    disabled (no dropout, no drop path). Linear layers start trunc-normal(0.02) with zero bias."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # one LayerNorm for queries and tokens, as the reference
        self.attn = TokenAttention(dim, num_heads)
        for layer in (self.attn.q, self.attn.kv, self.attn.proj):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, clustered: ClusteredTokens) -> torch.Tensor:
        merged = clustered.merged
        return merged + self.attn(self.norm1(merged), self.norm1(clustered.tokens), clustered.scores)


class TokenMerge(nn.Module):
    """CTM then TCBlock: a level's tokens ``[B, N, D]`` -> the next level's ``[B, ceil(N * rate), D]``."""

    def __init__(self, dim: int, rate: float, k: int = 3, num_heads: int = 8) -> None:
        super().__init__()
        self.ctm = CTM(dim, rate, k)
        self.block = TCBlock(dim, num_heads)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.block(self.ctm(tokens, mask, generator))
