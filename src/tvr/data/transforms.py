"""CLIP image preprocessing for decoded frames (datasets spec §1.2 step 5).

The model owns its input geometry: a :class:`Preprocessing` (image size, mean/std, resize rule) comes from
the backbone (:func:`tvr.models.backbone.resolve_preprocessing`), never from the data config. Two steps, so
the frame cache can store the output of the first one:
  * :meth:`ClipFrameTransform.resize_crop`: to the model resolution by the backbone's resize rule
    (``shortest``: short side to the resolution, then centre crop, as CLIP; ``squash``: both sides to the
    resolution), antialiased, rounded back to uint8 — the same rounding PIL's uint8 resize in CLIP4Clip does;
  * :meth:`ClipFrameTransform.normalize`: scale to [0, 1] and normalise with the backbone's mean/std
    (:func:`normalize_frames`).
The whole clip is processed at once so every frame gets the same crop. The training and evaluation loaders
stop after the first step: their workers hand over uint8 clips (a quarter of float32's bytes through the
workers' shared memory and over PCIe), and the model normalises them on its device
(:meth:`tvr.models.retriever.Retriever.frame_features`) with the same :func:`normalize_frames`.

``augment="xpool"`` replaces the centre crop, for training only, by X-Pool's augmentation: one
``RandomResizedCrop(scale=(0.5, 1.0), ratio=(3/4, 4/3))`` (bilinear) and a horizontal flip with
probability 0.5, shared by all frames of the clip.

``augment="drl_randaugment"`` is the DRL family's (TempMe, GLSCL, HBI; methods spec §0.3) training
augmentation: timm's RandAugment ``rand-m7-n4-mstd0.5-inc1`` with bicubic resampling, one draw of ops and
magnitudes for the whole clip, applied to the decoded frames at their own resolution before the usual
resize and centre crop (the reference augments the decoded PIL frames, then applies the CLIP transform).

Augmented clips cannot come from a frame cache.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg

# The interpolations and resize modes of open_clip's preprocessing configs that resize_crop implements
# (every pretrained config open_clip ships uses one of each).
INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "squash")
# open_clip's defaults, which its models without a pretrained config (and tvr's inline ones) take:
# OpenAI CLIP's mean/std, bicubic, short side then centre crop.
_OPEN_CLIP_DEFAULTS = PreprocessCfg()


@dataclass(frozen=True)
class Preprocessing:
    """How frames become a backbone's input: ``image_size`` px square, the resize rule, mean/std per channel."""

    image_size: int
    mean: tuple[float, ...] = tuple(_OPEN_CLIP_DEFAULTS.mean)
    std: tuple[float, ...] = tuple(_OPEN_CLIP_DEFAULTS.std)
    interpolation: str = _OPEN_CLIP_DEFAULTS.interpolation
    resize_mode: str = _OPEN_CLIP_DEFAULTS.resize_mode

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image size must be a positive integer, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {self.mean} and {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation '{self.interpolation}' is not implemented; tvr resizes with {', '.join(INTERPOLATIONS)}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize mode '{self.resize_mode}' is not implemented; tvr resizes with {', '.join(RESIZE_MODES)}"
            )

    def describe(self) -> dict:
        """JSON-ready, as an index manifest records it."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def normalize_frames(
    frames: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 ``[..., 3, S, S]`` -> float32, scaled to [0, 1] and normalised per channel; with ``mask``
    (``frames.shape[:-3]``), frames where it is False are zeros, as a reader pads them. One formula for the
    CPU and the device, so that a clip gives the same numbers wherever it is normalised."""
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=frames.device).view(shape)
    normalized = (frames.float().div_(255.0) - mean_t) / std_t
    if mask is None:
        return normalized
    return torch.where(mask.to(torch.bool)[..., None, None, None], normalized, 0.0)


Augmentation = Literal["none", "xpool", "drl_randaugment"]
AUGMENTATIONS = get_args(Augmentation)
DRL_RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"  # 4 ops of magnitude 7 +- 0.5 from timm's increasing-severity set


class ClipFrameTransform:
    def __init__(self, preprocessing: Preprocessing, augment: str = "none") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation '{augment}'; valid choices: {', '.join(AUGMENTATIONS)}")
        self.augment = augment
        self.preprocessing = preprocessing
        if augment == "drl_randaugment":
            self._rand_augment = _drl_rand_augment()

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def deterministic(self) -> bool:
        return self.augment == "none"

    def describe(self) -> dict:
        """What the augmentation does, recorded in metrics.json."""
        if self.augment == "drl_randaugment":
            return {"augment": self.augment, "timm": DRL_RAND_AUGMENT, "interpolation": "bicubic", "draw": "per clip"}
        return {"augment": self.augment}

    def resize_crop(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, S, S]``."""
        if self.augment == "drl_randaugment":
            frames = self._rand_augment_clip(frames)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        if self.augment == "xpool":
            return self._random_resized_crop_flip(x)
        height, width = x.shape[-2:]
        if self.preprocessing.resize_mode == "squash":
            new_h = new_w = self.image_size
        else:
            scale = self.image_size / min(height, width)
            new_h, new_w = max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale))
        if (new_h, new_w) != (height, width):
            x = F.interpolate(
                x.float(),
                size=(new_h, new_w),
                mode=self.preprocessing.interpolation,
                align_corners=False,
                antialias=True,
            )
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        return x[:, :, top : top + self.image_size, left : left + self.image_size].contiguous()

    def _random_resized_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop
        from torchvision.transforms.functional import InterpolationMode, resized_crop

        top, left, height, width = RandomResizedCrop.get_params(x[0], scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        size = [self.image_size, self.image_size]
        out = resized_crop(x, top, left, height, width, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        return out.flip(-1) if random.random() < 0.5 else out

    def _rand_augment_clip(self, frames: np.ndarray) -> np.ndarray:
        """timm draws the ops and magnitudes from Python's and NumPy's global RNGs (seeded per sample by
        :func:`tvr.data.order.item_randomness`): replaying the same RNG states for every frame applies one
        draw to the whole clip. On return the RNGs stand where a single draw leaves them."""
        from PIL import Image

        python_state, numpy_state = random.getstate(), np.random.get_state()
        augmented = []
        for frame in frames:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            augmented.append(np.asarray(self._rand_augment(Image.fromarray(frame))))
        return np.stack(augmented)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, 3, S, S]`` -> float ``[T, 3, S, S]``."""
        return normalize_frames(frames, self.preprocessing.mean, self.preprocessing.std)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.normalize(self.resize_crop(frames))


def _drl_rand_augment():
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    # Bicubic, as the reference; timm's default picks bilinear or bicubic at random on every call, which
    # would differ between frames. The reference's translate_const is left out: only the absolute
    # Translate ops read it, and the increasing-severity set has the relative ones.
    return rand_augment_transform(DRL_RAND_AUGMENT, {"interpolation": Image.Resampling.BICUBIC})
