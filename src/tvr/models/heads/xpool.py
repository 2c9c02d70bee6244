"""X-Pool (Gorti et al., CVPR 2022): text-conditioned cross-attention pooling of frames (methods spec §3).

For a text t and a video's frames x_1..x_F (raw CLIP embeddings, not normalised)::

    q = W_Q LN1(t),  k_f = W_K LN1(x_f),  u_f = W_V LN1(x_f)        (the same LayerNorm for both sides)
    a = softmax_f(q . k_f / sqrt(d_h))  per head;  o = W_O concat_h(sum_f a u_f) + b_O
    r = LN2(o);  z = LN3(r + Dropout(W_L r + b_L));   score = cos(t, z)

Parameter names match the reference module (``pool_frames.*`` in its checkpoints). Every ``*proj``
weight starts as the identity and every bias at zero, as in the reference.

Only the pairwise part runs per (text, video) pair: q is computed once per text; k, and ``W_O u`` per
head, once per video. Because the attention weights sum to one, ``W_O (sum a u) + b = sum a (W_O u) + b``
exactly, so a tile costs one attention, one ``D x D`` projection and three LayerNorms per pair.

``pooling="uniform"`` (an ablation, not in the reference) replaces ``a`` by the uniform average over the
real frames and keeps every other layer, which isolates what the text conditioning itself contributes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads.base import Repr, RetrievalHead
from tvr.models.heads.registry import register_head

POOLINGS = ("text", "uniform")


class _CrossAttentionProjections(nn.Module):
    """Holds the reference's ``cross_attn.{q,k,v,out}_proj`` parameters."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)


@register_head("xpool")
class XPoolHead(RetrievalHead):
    query_independent = False
    reference_key_renames = (("pool_frames.", ""),)

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        dropout: float = 0.3,
        mask_padded_frames: bool = True,
        pooling: str = "text",
    ) -> None:
        super().__init__(embed_dim)
        if embed_dim % num_heads:
            raise ValueError(f"xpool num_heads={num_heads} must divide the embedding width {embed_dim}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown xpool pooling '{pooling}'; valid choices: {', '.join(POOLINGS)}")
        self.num_heads = num_heads
        # Ablation switch: "text" is X-Pool (text-conditioned attention); "uniform" replaces the attention
        # weights with a plain average over the real frames and keeps every other layer.
        self.pooling = pooling
        # The reference attends to every frame (its sampler repeats frames, so there is no padding); tvr's
        # padded clips would let zero frames take attention, so they are masked unless asked otherwise.
        self.mask_padded_frames = mask_padded_frames
        self.cross_attn = _CrossAttentionProjections(embed_dim)
        self.linear_proj = nn.Linear(embed_dim, embed_dim)
        self.layer_norm1 = nn.LayerNorm(embed_dim)
        self.layer_norm2 = nn.LayerNorm(embed_dim)
        self.layer_norm3 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self._init_like_reference()

    def _init_like_reference(self) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "linear" in name or "proj" in name:
                    if name.endswith("weight"):
                        nn.init.eye_(param)
                    else:
                        param.zero_()

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def encode_text(self, text: TextFeatures) -> Repr:
        query = self.cross_attn.q_proj(self.layer_norm1(text.sentence))
        return {"text": F.normalize(text.sentence, dim=-1), "query": query}

    def encode_video(self, video: FrameFeatures) -> Repr:
        frames = self.layer_norm1(video.frames)
        keys = self.cross_attn.k_proj(frames)
        values = self.cross_attn.v_proj(frames).unflatten(-1, (self.num_heads, self.head_dim))  # [V, F, H, dh]
        out_weight = self.cross_attn.out_proj.weight.unflatten(1, (self.num_heads, self.head_dim))  # [D, H, dh]
        projected = torch.einsum("vfhe,dhe->vfhd", values, out_weight)  # W_O applied per head, before pooling
        return {"keys": keys, "values": projected, "mask": video.mask.to(keys.dtype)}  # float: all-gather friendly

    def attention(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        """Frame weights ``[Nv, Nt, H, F]`` (each row sums to one over the frames)."""
        if self.pooling == "uniform":
            mask = video_repr["mask"]
            weights = mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [V, F]; a video without frames gets 0
            return weights[:, None, None, :].expand(-1, text_repr["query"].shape[0], self.num_heads, -1)
        query = text_repr["query"].unflatten(-1, (self.num_heads, self.head_dim))  # [T, H, dh]
        keys = video_repr["keys"].unflatten(-1, (self.num_heads, self.head_dim))  # [V, F, H, dh]
        logits = torch.einsum("the,vfhe->vthf", query, keys) / math.sqrt(self.head_dim)
        if self.mask_padded_frames:
            padded = (video_repr["mask"] == 0)[:, None, None, :]
            logits = logits.masked_fill(padded, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)

    def pooled(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        """Text-conditioned video embeddings ``[Nv, Nt, D]`` (the reference's ``pool_frames`` output)."""
        attention = self.attention(text_repr, video_repr)
        pooled = torch.einsum("vthf,vfhd->vtd", attention, video_repr["values"]) + self.cross_attn.out_proj.bias
        residual = self.layer_norm2(pooled)
        return self.layer_norm3(residual + self.dropout(self.linear_proj(residual)))

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        pooled = F.normalize(self.pooled(text_repr, video_repr), dim=-1)
        return torch.einsum("td,vtd->tv", text_repr["text"], pooled)

    def pair_bytes(self) -> int:
        return 6 * self.embed_dim * 4  # pooled, residual, projection, LN output, normalised copy, slack
