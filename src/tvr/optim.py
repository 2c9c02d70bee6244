"""Parameter groups and learning-rate schedule.

Groups: backbone vs head ("new") parameters, each split into decay / no-decay. By default no-decay
covers 1-D tensors (biases, LayerNorm affine, ``logit_scale``, ``class_embedding``) and embeddings
named in ``no_decay_names``. CLIP4Clip's own rule (only names containing ``bias``) is available as
``no_decay_1d: false, no_decay_names: [bias]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass
class WarmupCosine:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then half-cosine to 0 at ``total_steps``.

    A plain class (not a closure) so LambdaLR's state_dict stays loadable with ``weights_only=True``.
    """

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def is_no_decay(name: str, param: nn.Parameter, no_decay_1d: bool, no_decay_names: list[str]) -> bool:
    return (no_decay_1d and param.ndim < 2) or any(pattern in name for pattern in no_decay_names)


def parameter_groups(
    named_parameters: list[tuple[str, nn.Parameter]],
    new_parameter_ids: set[int],
    backbone_lr: float,
    head_lr: float,
    weight_decay: float,
    no_decay_1d: bool = True,
    no_decay_names: list[str] | tuple[str, ...] = (),
) -> list[dict]:
    """Split trainable parameters into backbone/head x decay/no-decay groups (empty groups dropped)."""
    patterns = list(no_decay_names)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        owner = "head" if id(param) in new_parameter_ids else "backbone"
        buckets.setdefault((owner, is_no_decay(name, param, no_decay_1d, patterns)), []).append(param)
    groups = []
    for (owner, no_decay), params in sorted(buckets.items()):
        groups.append({
            "name": owner + ("_no_decay" if no_decay else ""),
            "params": params,
            "lr": head_lr if owner == "head" else backbone_lr,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
    return groups
