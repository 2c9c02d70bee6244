"""CLIP's text tower with a LoRA adapter on the fused QKV projection of every block (TempMe's text side)."""

from __future__ import annotations

import torch

from tvr.models.towers.base import SavesIdentity, TextTower, register_tower
from tvr.models.towers.blocks import block_forward, check_standard_blocks, qkv_lora_adapters


@register_tower("lora_text")
class LoRATextTower(SavesIdentity, TextTower):
    """Same masks and outputs as :meth:`CLIPBackbone.encode_text`, each block run by tvr (no patching of
    open_clip) with ``q, k, v += (u A^T) B^T``."""

    def __init__(self, backbone, lora_rank: int = 8, clip_weights: str = "frozen") -> None:
        super().__init__(clip_weights)
        self.check_options(lora_rank=lora_rank)
        blocks = backbone.clip.transformer.resblocks
        check_standard_blocks(blocks, "text")
        self.lora_rank = int(lora_rank)
        self.lora = qkv_lora_adapters(blocks, self.lora_rank)

    @classmethod
    def check_options(cls, **options) -> None:
        super().check_options(**options)
        if "lora_rank" in options and not (isinstance(options["lora_rank"], int) and options["lora_rank"] >= 1):
            raise ValueError(
                f"lora_text lora_rank must be an integer >= 1 (clip_text is the text tower without adapters), "
                f"got {options['lora_rank']!r}"
            )

    def settings(self) -> dict:
        return {"lora_rank": self.lora_rank}

    def forward(self, backbone, token_ids: torch.Tensor):
        x = backbone.embed_text(token_ids)
        bias = backbone.text_attention_bias(token_ids, x.dtype)
        for block, lora in zip(backbone.clip.transformer.resblocks, self.lora):
            x = block_forward(block, x, lora, bias)
        return backbone.project_text(x, token_ids)
