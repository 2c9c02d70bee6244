"""Key mapping from the papers' released state_dicts to tvr's module names.

Users load CLIP4Clip-style checkpoints through these functions; the golden-fixture tests load the
reference implementations' weights through them too, so the mapping is exercised against real layouts.

* :func:`map_reference_head_keys` renames a head's own keys (e.g. CLIP4Clip's
  ``frame_position_embeddings.*`` / ``transformerClip.resblocks.*``) to the tvr head's keys; a method
  whose weights sit inside CLIP (TempMe's ``TVPt_*`` adapters) maps them to its towers' keys, which the
  head owns (``video_tower.*``, ``text_tower.*``).
* :func:`convert_reference_state_dict` maps a whole reference model (``clip.*`` for the CLIP towers plus
  the head's keys) to a :class:`~tvr.lit_module.RetrievalModule` state_dict (``backbone.clip.*``,
  ``head.*``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tvr.models.heads import HEADS
from tvr.models.weights import (
    CLIP_PREFIX,
    is_transformers_layout,
    read_state_dict_file,
    strip_module_prefix,
    to_float32,
    transformers_to_open_clip,
)

REFERENCE_HINT = "pass a released pytorch_model.bin (CLIP4Clip, GLSCL) or model_best.pth (X-Pool)"


def map_reference_head_keys(head_name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference implementation's head-only state_dict to the keys of tvr's ``head_name`` head."""
    return HEADS.get(head_name).map_reference_keys(state_dict)


def convert_reference_state_dict(head_name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a full reference model state_dict (CLIP under ``clip.``) to tvr's RetrievalModule keys."""
    state_dict = strip_module_prefix(state_dict)
    owned = HEADS.get(head_name).reference_clip_keys

    def is_clip(key: str) -> bool:
        return key.startswith(CLIP_PREFIX) and not any(fragment in key for fragment in owned)

    clip = {key[len(CLIP_PREFIX) :]: value for key, value in state_dict.items() if is_clip(key)}
    head = {key: value for key, value in state_dict.items() if not is_clip(key)}
    # X-Pool's checkpoints hold the transformers (Hugging Face) CLIPModel; CLIP4Clip's may be fp16
    clip = transformers_to_open_clip(clip) if is_transformers_layout(clip) else to_float32(clip)
    converted = {f"backbone.clip.{key}": value for key, value in clip.items()}
    converted.update({f"head.{key}": value for key, value in map_reference_head_keys(head_name, head).items()})
    return converted


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state_dict of a released checkpoint: CLIP4Clip's and GLSCL's ``pytorch_model.bin`` (a bare
    state_dict) or X-Pool's ``model_best.pth`` (``{"epoch", "state_dict", "optimizer"}``); read with
    ``weights_only=True``."""
    return read_state_dict_file(Path(path), REFERENCE_HINT)
