"""open_clip's residual attention blocks, run by tvr instead of by open_clip.

A tower that changes what happens inside a transformer block (a LoRA delta on the fused QKV projection,
a bias on the attention logits, token merging between the attention and the MLP) cannot go through
``ResidualAttentionBlock.forward``, which hides the keys and calls ``nn.MultiheadAttention``. These
functions compute the same block from the block's own weights (``ln_1``, ``attn.in_proj_*``,
``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``), so open_clip's modules and state_dict keys stay
as they are: nothing is patched, and any open_clip ViT or text transformer built from standard blocks
works (B/32, B/16, tvr's tiny architectures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class UnsupportedBlockError(ValueError):
    pass


def check_cls_pooled_vit(visual: nn.Module, tower: str) -> None:
    """Refuse a vision tower whose blocks these functions cannot run, or that is not pooled by its CLS token
    (the towers that run the ViT block by block read the CLS row)."""
    check_standard_blocks(visual.transformer.resblocks, "vision")
    if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
        raise UnsupportedBlockError(
            f"the {tower} tower needs a ViT pooled by its CLS token (open_clip pool_type 'tok', no attentional pooler)"
        )


def check_standard_blocks(blocks: nn.ModuleList, where: str) -> None:
    """Refuse, at construction, open_clip block variants whose maths these functions do not reproduce."""
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        standard = (
            type(block) is ResidualAttentionBlock
            and isinstance(attn, nn.MultiheadAttention)
            and attn._qkv_same_embed_dim
            and attn.in_proj_bias is not None
            and attn.batch_first
            and not hasattr(block, "ln_1_kv")
        )
        if not standard:
            raise UnsupportedBlockError(
                f"{where} block {index} is a {type(block).__name__} with {type(attn).__name__} attention; towers that run "
                "inside the transformer (LoRA, token merging) support open_clip's standard ResidualAttentionBlock "
                "(fused QKV nn.MultiheadAttention, batch-first) only"
            )


class LoRA(nn.Module):
    """A rank-``r`` delta ``(u A^T) B^T`` on a projection ``in_features -> out_features``.

    TempMe's form: no ``alpha / r`` scaling and no dropout; ``A`` starts as ``nn.Linear``'s default
    (kaiming-uniform, a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) and ``B`` at zero, so a fresh adapter
    changes nothing.
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(u, self.down), self.up)


@dataclass
class AttentionOutput:
    out: torch.Tensor  # [N, L, W] after out_proj (before ls_1 and the residual)
    key_mean: torch.Tensor  # [N, L, head_dim] keys averaged over heads (ToMe's matching metric)


def attention(
    block: ResidualAttentionBlock, u: torch.Tensor, lora: LoRA | None = None, bias: torch.Tensor | None = None
) -> AttentionOutput:
    """Multi-head self-attention of ``u`` (already ``ln_1``-normalised, ``[N, L, W]``) with the block's weights.

    ``lora`` adds its delta to q, k and v before q is scaled; ``bias`` is added to the logits (broadcast to
    ``[N, heads, L, L]``: a causal/padding mask or ToMe's ``log size`` of each key).
    """
    attn = block.attn
    qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)
    if lora is not None:
        qkv = qkv + lora(u)
    q, k, v = rearrange(qkv, "n l (qkv h d) -> qkv n h l d", qkv=3, h=attn.num_heads)
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
    out = F.linear(rearrange(mixed, "n h l d -> n l (h d)"), attn.out_proj.weight, attn.out_proj.bias)
    return AttentionOutput(out=out, key_mean=k.mean(dim=1))


def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``x + ls_2(mlp(ln_2(x)))``, the second half of the block."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, lora: LoRA | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The whole block, as open_clip computes it, with an optional LoRA delta and logit bias."""
    x = x + block.ls_1(attention(block, block.ln_1(x), lora, bias).out)
    return mlp_residual(block, x)


def qkv_lora_adapters(blocks: nn.ModuleList, rank: int) -> nn.ModuleList:
    """One LoRA on the fused QKV projection of every block (width W -> 3W)."""
    return nn.ModuleList(LoRA(block.attn.embed_dim, 3 * block.attn.embed_dim, rank) for block in blocks)
