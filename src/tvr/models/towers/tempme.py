"""TempMe's vision tower (Shen et al., ICLR 2025; methods spec §1): temporal token merging inside CLIP's ViT.

The ``[B, T]`` clip layout is kept through the transformer. Blocks before the first clip layer are ImgMe
blocks: frames stay independent and, after the attention, ``tome_r`` tokens of each frame are merged
(bipartite soft matching on the head-mean keys, size-weighted averages). At a clip layer (ClipMe), each
group of neighbouring clips is joined into one sequence ``[CLS of every clip, patches of clip 1, ...]``,
merged across clips on the block input (a temporal embedding per clip is added after that metric is
taken), then merged within the new clip after the attention. Later blocks merge within clips. From the
first merge on, attention adds ``log size`` of each key (proportional attention). The CLS tokens are never
merged; the tower returns them, one per original frame in temporal order, through ``ln_post`` and the
projection, as the per-frame vectors of :class:`~tvr.models.backbone.FrameFeatures`.

LoRA (rank 8, no scaling, ``B = 0`` at start) sits on the fused QKV projection of every block; CLIP's
own weights are frozen by default (``clip_weights: frozen``, the reference) or fine-tuned (``trainable``).
"""

from __future__ import annotations

import inspect

import torch
from einops import rearrange
from torch import nn

from tvr.models.backbone import FrameFeatures
from tvr.models.towers.base import SavesIdentity, VideoTower, VisionGeometry, register_tower
from tvr.models.towers.blocks import attention, check_cls_pooled_vit, mlp_residual, qkv_lora_adapters
from tvr.models.towers.token_merging import BlockPlan, match, merge, plan_schedule


def join_clips(t: torch.Tensor | None, group: int, protected: int) -> torch.Tensor | None:
    """``[S, N, ...]`` sequences of consecutive clips -> ``[S / group, group * N, ...]`` laid out as
    ``[CLS of clip 1 .. clip g, patches of clip 1 .. clip g]``: clip-major, so frame order is kept."""
    if t is None:
        return None
    grouped = rearrange(t, "(s g) n ... -> s g n ...", g=group)
    cls, patches = grouped[:, :, :protected], grouped[:, :, protected:]
    return torch.cat(
        [rearrange(cls, "s g n ... -> s (g n) ..."), rearrange(patches, "s g n ... -> s (g n) ...")], dim=1
    )


def joins_clips(step: BlockPlan) -> bool:
    """A ClipMe block of group 1 joins nothing: the reference runs no temporal embedding or cross merge there."""
    return step.kind == "clip" and step.group > 1


@register_tower("tempme")
class TempMeTower(SavesIdentity, VideoTower):
    needs_full_clips = True  # every frame slot is merged; padding would be merged into real tokens
    outputs = VideoTower.outputs | {"tokens", "token_mask"}  # one CLS per frame; the merged token set on request

    def __init__(
        self,
        backbone,
        frames: int = 12,
        lora_rank: int = 8,
        tome_r: int = 2,
        clip_layers: list[int] = (8, 9, 10),
        clip_groups: list[int] = (2, 2, 3),
        cross_clip_ratio: float = 0.30,
        intra_clip_ratio: float = 0.10,
        temporal_pe: bool = True,
        prop_attn: bool = True,
        clip_weights: str = "frozen",
    ) -> None:
        super().__init__(clip_weights)
        self.check_options(lora_rank=lora_rank)
        visual = backbone.clip.visual
        check_cls_pooled_vit(visual, "TempMe")
        self.geometry = VisionGeometry.of_model(visual)
        self.frames, self.lora_rank, self.tome_r = int(frames), int(lora_rank), int(tome_r)
        self.clip_layers, self.clip_groups = [int(v) for v in clip_layers], [int(v) for v in clip_groups]
        self.cross_clip_ratio, self.intra_clip_ratio = float(cross_clip_ratio), float(intra_clip_ratio)
        self.use_temporal_pe, self.prop_attn = bool(temporal_pe), bool(prop_attn)
        self.plan: list[BlockPlan] = self.plan_for(self.geometry, **self.settings())
        self.lora = qkv_lora_adapters(visual.transformer.resblocks, self.lora_rank) if self.lora_rank > 0 else None
        # one embedding per clip entering each clip layer; zero at start (the reference), so it begins as a no-op
        self.temporal_embeddings = nn.ParameterDict(
            {
                str(step.index): nn.Parameter(torch.zeros(step.clips_in, self.geometry.width))
                for step in self.plan
                if joins_clips(step) and self.use_temporal_pe
            }
        )

    @classmethod
    def with_defaults(cls, **options) -> dict:
        """``options`` completed with the constructor's defaults (the reference's), so they are written once."""
        bound = inspect.signature(cls).bind_partial(None, **options)  # None: the backbone
        bound.apply_defaults()
        return {name: value for name, value in bound.arguments.items() if name != "backbone"}

    @classmethod
    def plan_for(cls, geometry: VisionGeometry, **options) -> list[BlockPlan]:
        """The token schedule these options give on this ViT; raises :class:`ScheduleError` if it does not fit."""
        o = cls.with_defaults(**options)
        return plan_schedule(
            geometry.depth,
            geometry.tokens_per_frame,
            int(o["frames"]),
            int(o["tome_r"]),
            [int(v) for v in o["clip_layers"]],
            [int(v) for v in o["clip_groups"]],
            float(o["cross_clip_ratio"]),
            float(o["intra_clip_ratio"]),
        )

    @classmethod
    def check_options(cls, **options) -> None:
        super().check_options(**options)
        if "lora_rank" in options and not (isinstance(options["lora_rank"], int) and options["lora_rank"] >= 0):
            raise ValueError(f"tempme lora_rank must be an integer >= 0 (0: no adapters), got {options['lora_rank']!r}")

    @classmethod
    def check_fits(cls, geometry: VisionGeometry, **options) -> None:
        cls.plan_for(geometry, **options)

    @classmethod
    def clip_frames(cls, **options) -> int:
        return int(cls.with_defaults(**options)["frames"])

    def settings(self) -> dict:
        return {
            "frames": self.frames,
            "lora_rank": self.lora_rank,
            "tome_r": self.tome_r,
            "clip_layers": self.clip_layers,
            "clip_groups": self.clip_groups,
            "cross_clip_ratio": self.cross_clip_ratio,
            "intra_clip_ratio": self.intra_clip_ratio,
            "temporal_pe": self.use_temporal_pe,
            "prop_attn": self.prop_attn,
        }

    def tokens_per_video(self) -> list[int]:
        """Tokens per video after every block (the spec's table: 576, ..., 97 for ViT-B/32)."""
        return [step.tokens_out * step.clips_out for step in self.plan]

    def forward(
        self, backbone, frames: torch.Tensor, mask: torch.Tensor | None = None, with_tokens: bool = False
    ) -> FrameFeatures:
        batch, num_frames = frames.shape[:2]
        if num_frames != self.frames:
            raise ValueError(
                f"the TempMe tower was built for clips of {self.frames} frames, got {num_frames}; "
                "its sampler must always yield exactly that many (data.video.*_sampler.max_frames)"
            )
        if mask is None:
            mask = torch.ones(batch, num_frames, dtype=torch.bool, device=frames.device)
        visual = backbone.clip.visual
        x = visual._embeds(rearrange(frames, "b t c h w -> (b t) c h w").to(visual.conv1.weight.dtype))  # [B*T, N, W]
        size = None  # patches each token stands for; None until the first merge (all ones)
        for step, block in zip(self.plan, visual.transformer.resblocks):
            x, size = self._block(step, block, x, size, batch)
        last = self.plan[-1]
        tokens = visual.ln_post(rearrange(x, "(b s) n w -> b s n w", b=batch))  # s: the clips left
        cls = rearrange(
            tokens[:, :, : last.protected_out], "b s n w -> b (s n) w"
        )  # [B, T, W]: one CLS per frame, in order
        projected = cls @ visual.proj if visual.proj is not None else cls
        features = FrameFeatures(frames=projected, mask=mask.bool())
        if with_tokens:
            flat = rearrange(tokens, "b s n w -> b (s n) w")
            features.tokens = flat @ visual.proj if visual.proj is not None else flat
            features.token_mask = torch.ones(features.tokens.shape[:2], dtype=torch.bool, device=frames.device)
        return features

    def _block(self, step: BlockPlan, block, x: torch.Tensor, size: torch.Tensor | None, batch: int):
        if joins_clips(step):
            protected_in = step.protected_out // step.group
            metric = join_clips(
                x, step.group, protected_in
            ).detach()  # matching sees the clips before the temporal embedding
            key = str(step.index)
            if key in self.temporal_embeddings and step.cross > 0:
                clips = rearrange(x, "(b s) n w -> b s n w", b=batch)
                x = rearrange(clips + self.temporal_embeddings[key][:, None, :], "b s n w -> (b s) n w")
            x, size = join_clips(x, step.group, protected_in), join_clips(size, step.group, protected_in)
            if step.cross > 0:
                x, size = merge(match(metric, step.protected_out, step.cross), x, size)
        bias = size.log()[:, None, None, :] if self.prop_attn and size is not None else None
        lora = self.lora[step.index] if self.lora is not None else None
        attended = attention(block, block.ln_1(x), lora, bias)
        x = x + block.ls_1(attended.out)
        if step.intra > 0:
            x, size = merge(match(attended.key_mean, step.protected_out, step.intra), x, size)
        return mlp_residual(block, x), size
