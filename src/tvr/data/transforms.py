"""CLIP image preprocessing for decoded frames (datasets spec §1.2 step 5).

Two steps, so the frame cache can store the output of the first one:
  * :meth:`ClipFrameTransform.resize_crop`: short side to the model resolution (bicubic, antialiased),
    centre crop, rounded back to uint8 — the same rounding PIL's uint8 resize in CLIP4Clip does;
  * :meth:`ClipFrameTransform.normalize`: scale to [0, 1] and normalise with CLIP's mean/std.
The whole clip is processed at once so every frame gets the same crop.

``augment="xpool"`` replaces the centre crop, for training only, by X-Pool's augmentation: one
``RandomResizedCrop(scale=(0.5, 1.0), ratio=(3/4, 4/3))`` (bilinear) and a horizontal flip with
probability 0.5, shared by all frames of the clip. Augmented clips cannot come from a frame cache.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


AUGMENTATIONS = ("none", "xpool")


class ClipFrameTransform:
    def __init__(self, image_size: int, mean=CLIP_MEAN, std=CLIP_STD, augment: str = "none") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation '{augment}'; valid choices: {', '.join(AUGMENTATIONS)}")
        self.augment = augment
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def deterministic(self) -> bool:
        return self.augment == "none"

    def resize_crop(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, S, S]``."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        if self.augment == "xpool":
            return self._random_resized_crop_flip(x)
        height, width = x.shape[-2:]
        scale = self.image_size / min(height, width)
        new_h, new_w = max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale))
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x.float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
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

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, 3, S, S]`` -> float ``[T, 3, S, S]``."""
        return (frames.float().div_(255.0) - self.mean) / self.std

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self.normalize(self.resize_crop(frames))
