"""CLIP4Clip ``seqTransf``: a temporal transformer over frame embeddings, residual to the input
(methods spec §2.3).

``h = f + P[:T]``; ``layers`` pre-LN blocks with key-padding bias ``-1e6`` on padded frames;
``f' = h + f``; then the meanP pooling of ``f'``. The blocks are CLIP text-transformer blocks (QuickGELU
MLP, 4x width) with LayerNorm eps 1e-12 as in CLIP4Clip's TF-style LayerNorm, and they are initialised
from the first ``layers`` blocks of the CLIP text tower; ``P`` from CLIP's text positional embedding.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import nn

from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads.base import Repr, RetrievalHead, masked_mean_of_unit_frames
from tvr.models.heads.registry import register_head

MASK_BIAS = -1e6  # CLIP4Clip's additive key-padding bias; finite, so an all-padded video stays finite
TF_LAYERNORM_EPS = 1e-12


@register_head("seqtransf")
class SeqTransfHead(RetrievalHead):
    reference_key_renames = (
        ("frame_position_embeddings.", "position_embedding."),
        ("transformerClip.resblocks.", "blocks."),
    )

    def __init__(
        self,
        embed_dim: int,
        layers: int = 4,
        heads: int | None = None,
        max_positions: int = 77,
        init_from_clip: bool = True,
    ) -> None:
        super().__init__(embed_dim)
        self.num_heads = heads or max(embed_dim // 64, 1)
        self.init_from_clip = init_from_clip
        self.position_embedding = nn.Embedding(max_positions, embed_dim)
        norm = partial(LayerNorm, eps=TF_LAYERNORM_EPS)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(embed_dim, self.num_heads, act_layer=QuickGELU, norm_layer=norm)
            for _ in range(layers)
        )

    def init_from_backbone(self, backbone: CLIPBackbone) -> None:
        if not self.init_from_clip:
            return
        clip = backbone.clip
        text_width = clip.positional_embedding.shape[1]
        text_blocks = clip.transformer.resblocks
        if text_width != self.embed_dim or len(text_blocks) < len(self.blocks):
            raise ValueError(
                f"seqtransf init_from_clip needs a CLIP text tower of width {self.embed_dim} with at least "
                f"{len(self.blocks)} blocks (got width {text_width}, {len(text_blocks)} blocks); "
                "set head.init_from_clip=false to initialise randomly"
            )
        rows = min(self.position_embedding.num_embeddings, clip.positional_embedding.shape[0])
        with torch.no_grad():
            self.position_embedding.weight[:rows].copy_(clip.positional_embedding[:rows])
        for block, source in zip(self.blocks, text_blocks):
            block.load_state_dict(source.state_dict())
        if self.num_heads != text_blocks[0].attn.num_heads:
            raise ValueError(
                f"seqtransf has {self.num_heads} heads but the CLIP text blocks it copies use "
                f"{text_blocks[0].attn.num_heads}; set head.heads to match"
            )

    def encode_text(self, text: TextFeatures) -> Repr:
        return {"text": F.normalize(text.sentence, dim=-1)}

    def temporal_features(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, num_frames, _ = frames.shape
        if num_frames > self.position_embedding.num_embeddings:
            raise ValueError(f"seqtransf supports at most {self.position_embedding.num_embeddings} frames, got {num_frames}")
        positions = torch.arange(num_frames, device=frames.device)
        hidden = frames + self.position_embedding(positions).unsqueeze(0)
        key_bias = (1.0 - mask.to(frames.dtype)) * MASK_BIAS  # [B, T]
        attn_bias = key_bias[:, None, :].expand(batch, num_frames, num_frames)
        attn_bias = attn_bias.repeat_interleave(self.num_heads, dim=0)  # [B * heads, T, T], batch-major
        for block in self.blocks:
            hidden = block(hidden, attn_mask=attn_bias)
        return hidden + frames

    def encode_video(self, video: FrameFeatures) -> Repr:
        return {"video": masked_mean_of_unit_frames(self.temporal_features(video.frames, video.mask), video.mask)}

    def similarity(self, text_repr: Repr, video_repr: Repr) -> torch.Tensor:
        return text_repr["text"] @ video_repr["video"].t()
