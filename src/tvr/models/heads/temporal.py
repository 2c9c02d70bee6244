"""CLIP4Clip's sequential transformer over frame features, shared by every head that uses it
(seqTransf, GLSCL, HBI): ``f' = Transformer(f + P[:T], key-padding bias) + f`` (methods spec §2.3, §0.4).

The blocks are CLIP text-transformer blocks (QuickGELU MLP, 4x width) with CLIP4Clip's TF-style
LayerNorm (eps 1e-12), initialised from the first blocks of the CLIP text tower and its positional
embedding; padded frames get an additive ``-1e6`` bias as attention keys.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import nn

from tvr.models.backbone import CLIPBackbone

log = logging.getLogger(__name__)
INIT_FROM_CLIP_CHOICES = (True, False, "auto")
MASK_BIAS = -1e6  # finite, so a fully padded video stays finite
TF_LAYERNORM_EPS = 1e-12
REFERENCE_KEY_RENAMES = (
    ("frame_position_embeddings.", "position_embedding."),
    ("transformerClip.resblocks.", "blocks."),
)


class TemporalTransformer(nn.Module):
    def __init__(self, width: int, layers: int = 4, heads: int | None = None, max_positions: int = 77) -> None:
        super().__init__()
        if layers < 1 or (heads is not None and heads < 1):
            # zero layers would silently make seqTransf/GLSCL a model without its temporal transformer
            raise ValueError(
                f"the temporal transformer needs layers >= 1 and heads >= 1 (or null), got layers={layers}, heads={heads}"
            )
        self.num_heads = heads or max(width // 64, 1)
        self.position_embedding = nn.Embedding(max_positions, width)
        norm = partial(LayerNorm, eps=TF_LAYERNORM_EPS)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(width, self.num_heads, act_layer=QuickGELU, norm_layer=norm) for _ in range(layers)
        )

    def init_as_configured(self, backbone: CLIPBackbone, init_from_clip: bool | str) -> None:
        """``init_from_clip``: true copies CLIP's text blocks (as the papers do), false keeps PyTorch's
        initialisation, ``auto`` copies only when the backbone carries loaded weights — a random backbone
        (the synthetic default, tests) has nothing worth copying, and its geometry need not fit."""
        if init_from_clip not in INIT_FROM_CLIP_CHOICES:
            raise ValueError(f"init_from_clip must be one of true, false, auto; got '{init_from_clip}'")
        if init_from_clip == "auto":
            init_from_clip = backbone.weights_source != "random"
            if not init_from_clip:
                log.info(
                    "temporal transformer: random backbone, so its blocks keep PyTorch's initialisation (init_from_clip=auto)"
                )
        if init_from_clip:
            self.init_from_clip_text(backbone)

    def init_from_clip_text(self, backbone: CLIPBackbone) -> None:
        """Copy CLIP's text positional embedding and its first ``len(blocks)`` text blocks."""
        clip = backbone.clip
        width = self.position_embedding.embedding_dim
        text_blocks = clip.transformer.resblocks
        if clip.positional_embedding.shape[1] != width or len(text_blocks) < len(self.blocks):
            raise ValueError(
                f"the temporal transformer's CLIP initialisation needs a text tower of width {width} with at least "
                f"{len(self.blocks)} blocks (got width {clip.positional_embedding.shape[1]}, {len(text_blocks)} blocks); "
                "set head.init_from_clip=false to initialise randomly"
            )
        if self.num_heads != text_blocks[0].attn.num_heads:
            raise ValueError(
                f"the temporal transformer has {self.num_heads} heads but the CLIP text blocks it copies use "
                f"{text_blocks[0].attn.num_heads}; set head.heads to match"
            )
        rows = min(self.position_embedding.num_embeddings, clip.positional_embedding.shape[0])
        with torch.no_grad():
            self.position_embedding.weight[:rows].copy_(clip.positional_embedding[:rows])
        for block, source in zip(self.blocks, text_blocks):
            block.load_state_dict(source.state_dict())

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``frames [B, T, D]``, ``mask [B, T]`` -> ``[B, T, D]``."""
        return self.encode(frames + self.positions(frames), mask) + frames

    def positions(self, sequence: torch.Tensor) -> torch.Tensor:
        """The position embeddings ``[1, T, D]`` of a ``[B, T, D]`` sequence."""
        length = sequence.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"the temporal transformer supports at most {self.position_embedding.num_embeddings} frames, got {length}"
            )
        return self.position_embedding(torch.arange(length, device=sequence.device)).unsqueeze(0)

    def encode(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The blocks alone over ``hidden [B, T, D]`` (positions already added), padded keys (``mask == 0``)
        biased by ``-1e6``; DRL's cross encoder runs them without seqTransf's residual."""
        batch, length, _ = hidden.shape
        key_bias = (1.0 - mask.to(hidden.dtype)) * MASK_BIAS
        attn_bias = key_bias[:, None, :].expand(batch, length, length).repeat_interleave(self.num_heads, dim=0)
        for block in self.blocks:
            hidden = block(hidden, attn_mask=attn_bias)
        return hidden


def prefixed_renames(prefix: str) -> tuple[tuple[str, str], ...]:
    """The reference renames for a head that holds its temporal transformer under ``prefix``."""
    return tuple((old, prefix + new) for old, new in REFERENCE_KEY_RENAMES)
