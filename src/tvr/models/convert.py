"""Key mapping from the papers' released state_dicts to tvr's module names.

Users load CLIP4Clip-style checkpoints through these functions; the golden-fixture tests load the
reference implementations' weights through them too, so the mapping is exercised against real layouts.

* :func:`map_reference_head_keys` renames a head's own keys (e.g. CLIP4Clip's
  ``frame_position_embeddings.*`` / ``transformerClip.resblocks.*``) to the tvr head's keys.
* :func:`convert_reference_state_dict` maps a whole reference model (``clip.*`` for the CLIP towers plus
  the head's keys) to a :class:`~tvr.lit_module.RetrievalModule` state_dict (``backbone.clip.*``,
  ``head.*``).
"""

from __future__ import annotations

import torch

from tvr.models.heads import HEADS
from tvr.models.heads.base import rename_reference_keys

CLIP_PREFIX = "clip."


def map_reference_head_keys(head_name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a reference implementation's head-only state_dict to the keys of tvr's ``head_name`` head."""
    head_cls = HEADS.get(head_name)
    return rename_reference_keys(state_dict, head_cls.reference_key_renames)


def convert_reference_state_dict(head_name: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a full reference model state_dict (CLIP under ``clip.``) to tvr's RetrievalModule keys."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    clip = {key[len(CLIP_PREFIX):]: value for key, value in state_dict.items() if key.startswith(CLIP_PREFIX)}
    head = {key: value for key, value in state_dict.items() if not key.startswith(CLIP_PREFIX)}
    converted = {f"backbone.clip.{key}": value for key, value in clip.items()}
    converted.update({f"head.{key}": value for key, value in map_reference_head_keys(head_name, head).items()})
    return converted
