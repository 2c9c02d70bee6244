"""The tower seam: the path from raw inputs to the features a head reads.

A *video tower* maps ``[B, T, 3, H, W]`` frames and their ``[B, T]`` mask to
:class:`~tvr.models.backbone.FrameFeatures` (per-frame vectors, and optionally a token set with its own
mask); a *text tower* maps token ids to :class:`~tvr.models.backbone.TextFeatures`. Both run the shared
CLIP backbone's weights, which they receive at every call and never own, so open_clip's modules and
state_dict keys stay untouched. What a tower adds (LoRA adapters, temporal embeddings) are its own
parameters: they train in their own learning-rate group (``optim.tower_lr``).

The config chooses the towers (``head.video_tower``/``head.text_tower`` and their ``*_options``; a head
without them reads the ones it names itself, :meth:`RetrievalHead.default_towers`); the Retriever builds
them from the registry and the head owns them (``head.video_tower``, ``head.text_tower``), so a checkpoint
of a head carries its method's weights. Any head reads any tower that gives the features it reads: a
tower declares them (:attr:`Tower.outputs`, fields of the features it returns), a head declares what it
reads, and start-up validation compares the two. The default pair is ``per_frame`` + ``clip_text``,
which have no parameters. A tower also states what it does to CLIP's own weights (``clip_weights``):
``trainable`` (full fine-tuning) or ``frozen`` (parameter-efficient: every CLIP weight, ``logit_scale``
included, stays as loaded). Its structural settings are saved inside the checkpoint and compared when it
is loaded, so a model trained with one tower or schedule refuses to load into another.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tvr.registry import Registry

TOWERS: Registry["Tower"] = Registry("tower", package="tvr.models.towers")
CLIP_WEIGHTS = ("trainable", "frozen")


def register_tower(name: str):
    def decorator(cls):
        cls.name = name
        return TOWERS.register(name)(cls)

    return decorator


class TowerMismatchError(ValueError):
    """A checkpoint's tower (or its schedule) differs from the tower of the model it is loaded into."""


class Tower(nn.Module):
    name: str
    kind: str  # "video" or "text"
    #: The fields of the features this tower fills (:class:`~tvr.models.backbone.FrameFeatures` for a video
    #: tower, :class:`~tvr.models.backbone.TextFeatures` for a text tower); optional ones on request.
    outputs: frozenset[str]

    def __init__(self, clip_weights: str = "trainable") -> None:
        super().__init__()
        self.check_options(clip_weights=clip_weights)
        self.clip_weights = clip_weights

    @classmethod
    def check_options(cls, **options) -> None:
        """Raise ``ValueError`` naming the option if a given value cannot work. Needs no backbone, so start-up
        validation calls it on the configured options; constructors call it too."""
        if "clip_weights" in options and options["clip_weights"] not in CLIP_WEIGHTS:
            raise ValueError(
                f"tower clip_weights must be one of {', '.join(CLIP_WEIGHTS)}, got '{options['clip_weights']}'"
            )

    @property
    def freezes_clip(self) -> bool:
        return self.clip_weights == "frozen"

    def settings(self) -> dict[str, Any]:
        """What determines this tower's function (not its weights): saved in checkpoints and compared on load."""
        return {}

    def backbone_rate_parameters(self) -> set[str]:
        """Names of this tower's own parameters that train at the backbone's learning rate rather than the
        tower's (a reference whose optimiser groups by name and misses a new module: Prompt Switch's
        aggregation attention)."""
        return set()

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings()}


class SavesIdentity:
    """Mixin for towers with parameters: their identity is saved beside their weights (``_extra_state``)
    and checked when a state_dict is loaded. Parameter-free towers leave it out, so today's checkpoints
    stay key-for-key the same."""

    def get_extra_state(self) -> dict[str, Any]:
        return self.identity()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        check_same_tower(self.kind, state, self.identity())


def check_same_tower(kind: str, saved: dict[str, Any] | None, own: dict[str, Any]) -> None:
    saved = saved or DEFAULT_IDENTITY[kind]
    if saved != own:
        raise TowerMismatchError(
            f"the checkpoint was trained with {kind} tower {describe(saved)}, but this model's {kind} tower is {describe(own)}; "
            "evaluate or resume it with the head settings it was trained with (tvr-eval takes them from the checkpoint "
            "unless head.* is overridden)"
        )


def describe(identity: dict[str, Any]) -> str:
    options = ", ".join(f"{key}={value}" for key, value in identity.items() if key != "name")
    return f"'{identity['name']}'" + (f" ({options})" if options else "")


DEFAULT_IDENTITY = {"video": {"name": "per_frame"}, "text": {"name": "clip_text"}}


def check_state_dict_towers(towers: dict[str, Tower], state_dict: dict, prefix: str) -> None:
    """Compare the towers a state_dict was saved with (``<prefix><kind>_tower._extra_state``) with ``towers``,
    before any weight is loaded. Without that entry, a state_dict holding no weights of that tower was
    saved with the parameter-free default; one that holds some (a converted reference checkpoint) is
    left to the key-by-key comparison."""
    for kind, tower in towers.items():
        saved = state_dict.get(f"{prefix}{kind}_tower._extra_state")
        if saved is None and any(key.startswith(f"{prefix}{kind}_tower.") for key in state_dict):
            continue
        check_same_tower(kind, saved, tower.identity())


@dataclass(frozen=True)
class VisionGeometry:
    """What a video tower's settings must fit: the ViT's depth, width and tokens per frame (CLS included)."""

    depth: int
    width: int
    tokens_per_frame: int

    @classmethod
    def of_architecture(cls, architecture: dict) -> "VisionGeometry":
        """From an open_clip architecture config (before any model is built: start-up validation)."""
        from open_clip.model import CLIPVisionCfg

        vision = architecture.get("vision_cfg", {})
        image = vision.get("image_size", CLIPVisionCfg.image_size)
        patch = vision.get("patch_size", CLIPVisionCfg.patch_size)
        image, patch = (v if isinstance(v, (list, tuple)) else (v, v) for v in (image, patch))
        return cls(
            depth=int(vision.get("layers", CLIPVisionCfg.layers)),
            width=int(vision.get("width", CLIPVisionCfg.width)),
            tokens_per_frame=(image[0] // patch[0]) * (image[1] // patch[1]) + 1,
        )

    @classmethod
    def of_model(cls, visual) -> "VisionGeometry":
        """From a built open_clip ``VisionTransformer``."""
        grid = visual.grid_size
        return cls(
            depth=len(visual.transformer.resblocks),
            width=int(visual.transformer.width),
            tokens_per_frame=grid[0] * grid[1] + 1,
        )


class VideoTower(Tower):
    kind = "video"
    #: Per-frame vectors and their mask always; a tower may add ``patches`` (per-frame patch tokens) or
    #: ``tokens`` with ``token_mask`` (a token set), computed only when asked ``with_tokens`` (:data:`ON_REQUEST`).
    outputs = frozenset({"frames", "mask"})
    #: True for towers that cannot take padded frame slots: their sampler must always yield full clips.
    needs_full_clips: bool = False

    def forward(self, backbone, frames: torch.Tensor, mask: torch.Tensor | None = None, with_tokens: bool = False):
        """``[B, T, 3, H, W]`` frames (+ ``[B, T]`` mask) -> ``FrameFeatures``; ``with_tokens`` asks for the token set."""
        raise NotImplementedError

    @classmethod
    def check_fits(cls, geometry: VisionGeometry, **options) -> None:
        """Raise ``ValueError`` saying why (and what would fit) if ``options`` do not fit this ViT; called at
        start-up, before any data work, and when the tower is built."""

    @classmethod
    def clip_frames(cls, **options) -> int | None:
        """The frames per clip the tower is built for (its parameters depend on it), or None for any."""
        return None

    @classmethod
    def frames_multiple_of(cls, **options) -> int | None:
        """For a tower that processes frames in groups (Prompt Switch): clips must hold a multiple of this many
        frames, training and evaluation alike (6 and 12 in the reference); None: no such rule."""
        return None


class TextTower(Tower):
    kind = "text"
    outputs = frozenset({"sentence", "tokens", "mask"})

    def forward(self, backbone, token_ids: torch.Tensor):
        """``[B, L]`` token ids -> ``TextFeatures``."""
        raise NotImplementedError


#: Video features a tower computes only when a head reads them (``forward(..., with_tokens=True)``).
ON_REQUEST = frozenset({"patches", "tokens", "token_mask"})


def create_tower(name: str, **options) -> Tower:
    return TOWERS.create(name, **options)


def tower_names(kind: str) -> list[str]:
    """The registered towers of one kind ("video" or "text")."""
    return [name for name in TOWERS.names() if TOWERS.get(name).kind == kind]


def tower_class(name: str, kind: str) -> type[Tower]:
    """The registered ``kind`` tower ``name``; raises ``KeyError`` for an unknown name, ``ValueError`` for a
    tower of the other kind, each listing the valid ``kind`` towers."""
    valid = ", ".join(tower_names(kind))
    if name not in TOWERS:
        raise KeyError(f"unknown {kind} tower '{name}'; valid {kind} towers: {valid}")
    cls = TOWERS.get(name)
    if cls.kind != kind:
        raise ValueError(f"'{name}' is a {cls.kind} tower, not a {kind} tower; valid {kind} towers: {valid}")
    return cls


def tower_option_names(cls: type[Tower]) -> set[str]:
    """The options a tower's constructor takes (the backbone, which tvr passes, aside)."""
    return set(inspect.signature(cls).parameters) - {"backbone"}
