"""Prompt Switch's vision tower (Deng et al., ICCV 2023; methods spec §2): a prompt cube switched across frames.

Frames are processed in groups of ``num_prompts`` consecutive frames (``G = N_p``; a clip of ``T`` frames is
``T / G`` groups, each one pass of the segment-pass sampler over the whole video). Frame ``f`` of every group
gets the ``N_p`` prompt tokens ``C[f]`` appended after its image tokens (after ``ln_pre``, without position
embedding). In every block the prompt rows of the attention *input* ``ln_1(x)`` are transposed across
(frame, slot) within the group, so each frame attends to one prompt of every frame of its group; the
residual stream stays in cube order. After the last block each frame's raw CLS attends to the raw final
prompts of its group (``aggregate``, an ``nn.MultiheadAttention`` whose ``out_proj`` starts at zero, so a
fresh tower is plain CLIP on the CLS), then ``ln_post`` and the projection give the per-frame vectors.

The ``[B, T]`` layout is kept: ``[B*T, Ls + N_p, W]`` rows, video-major, groups of ``G`` consecutive rows.
The tower never pads: its sampler repeats frames (``needs_full_clips``); ``T`` must be a multiple of ``G``
(:meth:`frames_multiple_of`), 6 to train and 12 to test in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from einops import rearrange
from torch import nn

from tvr.models.backbone import FrameFeatures
from tvr.models.towers.base import SavesIdentity, VideoTower, VisionGeometry, register_tower
from tvr.models.towers.blocks import attention, check_cls_pooled_vit, mlp_residual
from tvr.options import limits

TEST_AGGREGATIONS = ("per_group", "whole_clip")
AGGREGATION_LR_GROUPS = ("clip", "new")
#: The reference's cube init: std ``initializer_range * W**-0.5`` (spec §2.2).
PROMPT_INIT_RANGE = 0.02


@dataclass
class PromptSwitchTrace:
    """The tower's intermediate tensors (the golden fixture's names), for tests and inspection."""

    encoder_in: torch.Tensor  # [B*T, Ls + N_p, W]
    attn_in_prompts: list[torch.Tensor] = field(default_factory=list)  # per block: [B*T, N_p, W], after the switch
    block_out: list[torch.Tensor] = field(default_factory=list)  # per block: [B*T, Ls + N_p, W]
    cls_last: torch.Tensor | None = None  # [B*T, W] raw CLS after the last block
    agg_attn: torch.Tensor | None = None  # [B*T, W] aggregation output, before the CLS residual
    post_ln: torch.Tensor | None = None  # [B*T, W]
    frames: torch.Tensor | None = None  # [B, T, D] unnormalised frame embeddings


def switch_prompts(prompts: torch.Tensor, group: int) -> torch.Tensor:
    """``[B*T, N_p, W]`` prompt rows -> the same with (frame in group, slot) transposed: row ``f`` slot ``p``
    takes row ``p`` slot ``f`` of its group. An involution, so the direction is not a choice."""
    grouped = rearrange(prompts, "(s f) p w -> s f p w", f=group)
    return rearrange(grouped.transpose(1, 2), "s p f w -> (s p) f w")


@register_tower("prompt_switch")
class PromptSwitchTower(SavesIdentity, VideoTower):
    needs_full_clips = True  # no notion of padded frames: short videos repeat frames (the reference's sampler)

    def __init__(
        self,
        backbone,
        num_prompts: Annotated[int, limits(minimum=1)] = 6,
        test_aggregation: Literal["per_group", "whole_clip"] = "per_group",
        aggregation_lr_group: Literal["clip", "new"] = "clip",
        clip_weights: str = "trainable",
    ) -> None:
        """``num_prompts``: prompts per frame, also the frames per switching group (the reference ties them).
        ``test_aggregation``: ``per_group`` (reference, Q1) attends each frame's CLS to its own group's prompts
        also at evaluation; ``whole_clip`` to all prompts of the clip when not training.
        ``aggregation_lr_group``: ``clip`` (reference, Q2) trains the aggregation attention at the backbone's
        rate (the reference's name filter misses it); ``new`` at the tower's rate, as the cube."""
        super().__init__(clip_weights)
        self.check_options(
            num_prompts=num_prompts, test_aggregation=test_aggregation, aggregation_lr_group=aggregation_lr_group
        )
        visual = backbone.clip.visual
        check_cls_pooled_vit(visual, "Prompt Switch")
        self.geometry = VisionGeometry.of_model(visual)
        self.check_fits(self.geometry, num_prompts=num_prompts)
        self.num_prompts, self.test_aggregation = int(num_prompts), test_aggregation
        self.aggregation_lr_group = aggregation_lr_group
        width = self.geometry.width
        self.prompts = nn.Parameter(
            torch.randn(self.num_prompts, self.num_prompts, width) * PROMPT_INIT_RANGE * width**-0.5
        )
        heads = visual.transformer.resblocks[0].attn.num_heads
        self.aggregate = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.zeros_(self.aggregate.out_proj.weight)  # a fresh tower is CLIP on the CLS (spec §2.4)
        nn.init.zeros_(self.aggregate.out_proj.bias)

    @classmethod
    def check_options(cls, **options) -> None:
        super().check_options(**options)
        checks = {
            "num_prompts": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "test_aggregation": lambda v: v in TEST_AGGREGATIONS,
            "aggregation_lr_group": lambda v: v in AGGREGATION_LR_GROUPS,
        }
        allowed = {"num_prompts": "an integer >= 1", "test_aggregation": TEST_AGGREGATIONS}
        allowed["aggregation_lr_group"] = AGGREGATION_LR_GROUPS
        for name, valid in checks.items():
            if name in options and not valid(options[name]):
                raise ValueError(f"prompt_switch {name} must be {allowed[name]}, got {options[name]!r}")

    @classmethod
    def check_fits(cls, geometry: VisionGeometry, num_prompts: int = 6, **options) -> None:
        """The prompts must leave the ViT's tokens the majority of each frame's sequence: ``N_p`` at most the
        image tokens per frame (the reference uses 6 on 50)."""
        if num_prompts > geometry.tokens_per_frame:
            raise ValueError(
                f"num_prompts {num_prompts} exceeds the {geometry.tokens_per_frame} tokens per frame (CLS + patches) of this ViT; "
                f"use at most {geometry.tokens_per_frame} prompts"
            )

    @classmethod
    def frames_multiple_of(cls, num_prompts: int = 6, **options) -> int:
        return int(num_prompts)

    @property
    def tokens_per_frame(self) -> int:
        """Tokens each frame carries through every block: CLS, patches and its ``num_prompts`` prompts."""
        return self.geometry.tokens_per_frame + self.num_prompts

    def settings(self) -> dict:
        return {"num_prompts": self.num_prompts, "test_aggregation": self.test_aggregation}

    def backbone_rate_parameters(self) -> set[str]:
        return (
            {name for name, _ in self.aggregate.named_parameters(prefix="aggregate")}
            if self.aggregation_lr_group == "clip"
            else set()
        )

    def forward(
        self, backbone, frames: torch.Tensor, mask: torch.Tensor | None = None, with_tokens: bool = False
    ) -> FrameFeatures:
        batch, num_frames = frames.shape[:2]
        if mask is None:
            mask = torch.ones(batch, num_frames, dtype=torch.bool, device=frames.device)
        return FrameFeatures(frames=self.trace(backbone, frames).frames, mask=mask.bool())

    def trace(self, backbone, frames: torch.Tensor) -> PromptSwitchTrace:
        """Run the tower on ``[B, T, 3, H, W]`` frames, keeping every intermediate tensor."""
        batch, num_frames = frames.shape[:2]
        group = self.num_prompts
        if num_frames % group:
            raise ValueError(
                f"the Prompt Switch tower switches prompts within groups of num_prompts={group} frames, got clips of "
                f"{num_frames}; sample a multiple of {group} frames (data.video.*_sampler.max_frames)"
            )
        visual = backbone.clip.visual
        x = visual._embeds(rearrange(frames, "b t c h w -> (b t) c h w").to(visual.conv1.weight.dtype))
        image_tokens = x.shape[1]
        cube = self.prompts.to(x.dtype).repeat(batch * num_frames // group, 1, 1)  # row r gets C[r mod G]
        x = torch.cat([x, cube], dim=1)
        trace = PromptSwitchTrace(encoder_in=x)
        for block in visual.transformer.resblocks:
            u = block.ln_1(x)
            u = torch.cat([u[:, :image_tokens], switch_prompts(u[:, image_tokens:], group)], dim=1)
            trace.attn_in_prompts.append(u[:, image_tokens:])
            x = mlp_residual(block, x + block.ls_1(attention(block, u).out))
            trace.block_out.append(x)
        cls, prompts = x[:, 0], x[:, image_tokens:]
        # the frames whose CLS tokens share one set of prompts: a group, or (whole_clip at evaluation) the clip
        span = num_frames if (self.test_aggregation == "whole_clip" and not self.training) else group
        query = rearrange(cls, "(s f) w -> s f w", f=span)
        keys = rearrange(prompts, "(s f) p w -> s (f p) w", f=span)
        aggregated = rearrange(self.aggregate(query, keys, keys, need_weights=False)[0], "s f w -> (s f) w")
        pooled = visual.ln_post(cls + aggregated)
        projected = pooled @ visual.proj if visual.proj is not None else pooled
        trace.cls_last, trace.agg_attn, trace.post_ln = cls, aggregated, pooled
        trace.frames = rearrange(projected, "(b t) d -> b t d", b=batch)
        return trace
