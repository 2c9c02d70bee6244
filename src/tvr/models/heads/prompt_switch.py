"""Prompt Switch (Deng et al., ICCV 2023; methods spec §1, §4): meanP over the ``prompt_switch`` video tower.

The method lives in its video tower (the switched prompt cube and the aggregation attention); the video
vector is the mean of unit frame embeddings, query-independent, so a gallery can be served from a vector
index. A preset: ``head=meanpool head.video_tower=prompt_switch`` with the same options is the same
retrieval model under another name.

Training adds the reference's captioning loss (spec §4.3, :meth:`PromptSwitchHead.extra_losses`): a 2-layer
post-norm ``nn.TransformerDecoder`` reads the caption's CLIP token + position embeddings (looked up without
gradient, through the loss context's backbone) under a causal mask, cross-attends to the *unnormalised*
frame embeddings (so it trains the whole video tower) and predicts the next token with ``caption_head``
(initialised as a copy of CLIP's token embedding). The loss is a class-weighted cross entropy over every
position before each caption's EOT, frequent words (and EOT, Q4) weighted ``caption_frequent_weight``,
times ``caption_loss_mult`` (0: no captioner). None of it is used at evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.backbone import FrameFeatures
from tvr.models.heads.base import LossContext, Repr
from tvr.models.heads.meanpool import MeanPoolHead
from tvr.models.heads.registry import register_head
from tvr.models.towers.prompt_switch import PromptSwitchTower

# The reference keeps the tower's weights inside its HF CLIP modules (spec §5).
_REFERENCE_TOWER_KEYS = (
    ("clip.vision_model.encoder.prompt_embedding", "video_tower.prompts"),
    ("clip.vision_model.attn.", "video_tower.aggregate."),
)
#: The captioner's modules keep the reference's names (``caption_prenorm``, ``caption_transformer``, ``caption_head``).
_REFERENCE_CAPTIONER = "caption_"
#: The reference's frequent words "in on of to about this that a an the and there here is are . ," plus
#: <|endoftext|> and <|startoftext|>, as CLIP BPE ids (spec §4.3).
FREQUENT_TOKENS = (530, 525, 539, 531, 781, 589, 682, 320, 550, 518, 537, 997, 763, 533, 631, 269, 267, 49407, 49406)
CLIP_VOCABULARY = 49408


@register_head("prompt_switch")
class PromptSwitchHead(MeanPoolHead):
    reference_clip_keys = ("vision_model.encoder.prompt_embedding", "vision_model.attn.")

    def __init__(
        self,
        embed_dim: int,
        num_prompts: int = 6,
        test_aggregation: str = "per_group",
        aggregation_lr_group: str = "clip",
        clip_weights: str = "trainable",
        caption_loss_mult: float = 0.5,
        caption_layers: int = 2,
        caption_heads: int = 8,
        caption_ffn: int = 2048,
        caption_frequent_weight: float = 0.25,
        caption_frequent_tokens: list[int] = FREQUENT_TOKENS,
        vocab_size: int = CLIP_VOCABULARY,
    ) -> None:
        """``num_prompts``, ``test_aggregation``, ``aggregation_lr_group``, ``clip_weights``: the prompt_switch
        tower's (its signature documents them). The captioner: ``caption_layers`` decoder layers of
        ``caption_heads`` heads and ``caption_ffn`` hidden units over the joint width (the reference takes
        CLIP's text sizes: 8 heads, 2048 at B/32), its loss times ``caption_loss_mult`` (0: no captioner),
        ``caption_frequent_tokens`` weighted ``caption_frequent_weight``; ``vocab_size``: the text tower's."""
        super().__init__(embed_dim)
        if caption_loss_mult < 0:
            raise ValueError(f"head.caption_loss_mult must be >= 0 (0: no captioning loss), got {caption_loss_mult}")
        if caption_loss_mult and embed_dim % caption_heads:
            raise ValueError(f"head.caption_heads {caption_heads} must divide the joint width {embed_dim}")
        if any(not 0 <= token < vocab_size for token in caption_frequent_tokens):
            raise ValueError(f"head.caption_frequent_tokens must be token ids below vocab_size {vocab_size}")
        self.caption_loss_mult = float(caption_loss_mult)
        if self.caption_loss_mult:
            self.caption_prenorm = nn.LayerNorm(embed_dim)
            layer = nn.TransformerDecoderLayer(embed_dim, caption_heads, caption_ffn, dropout=0.0, batch_first=True)
            # deep copies of one layer: both start identical, as the reference's (Q10)
            self.caption_transformer = nn.TransformerDecoder(layer, caption_layers, norm=nn.LayerNorm(embed_dim))
            self.caption_head = nn.Linear(embed_dim, vocab_size)
            nn.init.zeros_(self.caption_head.bias)
            weights = torch.ones(vocab_size)
            weights[list(caption_frequent_tokens)] = caption_frequent_weight
            self.register_buffer("caption_class_weights", weights, persistent=False)
        self.video_options = {
            "num_prompts": num_prompts,
            "test_aggregation": test_aggregation,
            "aggregation_lr_group": aggregation_lr_group,
            "clip_weights": clip_weights,
        }
        PromptSwitchTower.check_options(**self.video_options)

    def default_towers(self) -> dict[str, dict]:
        return {"video": {"name": "prompt_switch", **self.video_options}, "text": {"name": "clip_text"}}

    def init_from_backbone(self, backbone) -> None:
        """The caption head starts as a copy of CLIP's token embedding (not tied: it trains on its own); a
        ``vocab_size`` below the table's predicts its first ids only."""
        if not self.caption_loss_mult:
            return
        table = backbone.clip.token_embedding.weight
        vocab_size, width = self.caption_head.weight.shape
        if width != table.shape[1] or vocab_size > table.shape[0]:
            raise ValueError(
                f"the captioner predicts {vocab_size} ids of width {width} (head.vocab_size x joint width) but CLIP's "
                f"token embedding is {tuple(table.shape)}: the captioner needs a text width equal to the joint width "
                "and head.vocab_size at most the text vocabulary"
            )
        with torch.no_grad():
            self.caption_head.weight.copy_(table[:vocab_size])

    def encode_video(self, video: FrameFeatures) -> Repr:
        represented = super().encode_video(video)
        if self.training and self.caption_loss_mult:
            represented["frames"] = video.frames  # the captioner's memory: unnormalised frame embeddings
        return represented

    def caption_logits(self, frames: torch.Tensor, token_ids: torch.Tensor, backbone) -> torch.Tensor:
        """``[B, L-1, vocab]`` next-token logits of captions ``token_ids`` ``[B, L]`` given ``[B, T, D]`` frames."""
        with torch.no_grad():  # the reference sends no caption gradient into CLIP's embeddings (Q5)
            embedded = backbone.embed_text(token_ids[:, :-1])
        target = self.caption_prenorm(embedded.to(frames.dtype))
        length = target.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), dtype=frames.dtype, device=frames.device), 1)
        return self.caption_head(self.caption_transformer(target, frames, tgt_mask=causal))

    def caption_loss(self, logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The class-weighted mean over every position before each caption's EOT (its argmax id) of the
        next-token cross entropy: the position whose target is the EOT counts, padding does not."""
        positions = torch.arange(logits.shape[1], device=token_ids.device)
        kept = positions[None, :] < token_ids.argmax(dim=1, keepdim=True)
        weights = self.caption_class_weights.to(logits.dtype)
        return self.caption_loss_mult * F.cross_entropy(logits[kept], token_ids[:, 1:][kept], weight=weights)

    def extra_losses(self, text_repr: Repr, video_repr: Repr, context: LossContext) -> dict[str, torch.Tensor]:
        if not (self.caption_loss_mult and "frames" in video_repr):
            return {}
        if context.token_ids is None or context.backbone is None:
            raise ValueError("the Prompt Switch captioning loss needs the caption token ids and the backbone")
        logits = self.caption_logits(video_repr["frames"], context.token_ids, context.backbone)
        return {"caption": self.caption_loss(logits, context.token_ids)}

    @classmethod
    def map_reference_keys(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's added weights (cube, aggregation) -> this head's tower keys."""
        out = {}
        for key, value in state_dict.items():
            if key.startswith(_REFERENCE_CAPTIONER):
                out[key] = value
                continue
            for old, new in _REFERENCE_TOWER_KEYS:
                if key.startswith(old):
                    out[new + key[len(old) :]] = value
                    break
            else:
                raise KeyError(
                    f"'{key}' is not one of Prompt Switch's reference weights "
                    "(clip.vision_model.encoder.prompt_embedding, clip.vision_model.attn.*, caption_*)"
                )
        return out
