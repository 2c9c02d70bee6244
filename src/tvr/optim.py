"""Parameter groups and learning-rate schedule.

Groups: backbone vs head ("new") parameters, each split into decay / no-decay. By default no-decay
covers 1-D tensors (biases, LayerNorm affine, ``logit_scale``, ``class_embedding``) and embeddings
named in ``no_decay_names``. CLIP4Clip's own rule (only names containing ``bias``) is available as
``no_decay_1d: false, no_decay_names: [bias]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
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


@dataclass
class Clip4ClipWarmupCosine:
    """CLIP4Clip's ``warmup_cosine``: with ``x = step / total_steps``, ``x / warmup`` below ``warmup``, else
    ``0.5 (1 + cos(pi x))`` — the cosine runs over the whole of x, so the factor drops from 1 to ~0.976
    when warm-up ends, and it rises again past ``x = 1`` (GLSCL's hard-coded 5-epoch ``t_total`` on a
    10-epoch run). Step 0 has factor 0, as in the reference."""

    warmup: float
    total_steps: int

    def __call__(self, step: int) -> float:
        x = step / max(1, self.total_steps)
        return x / self.warmup if x < self.warmup else 0.5 * (1.0 + math.cos(math.pi * x))


# name -> factory(warmup_proportion, total_steps) of the LR factor LambdaLR multiplies by
SCHEDULES = {
    "warmup_cosine": lambda warmup, total: WarmupCosine(int(warmup * total), total),
    "clip4clip_warmup_cosine": Clip4ClipWarmupCosine,
}


class BertAdam(torch.optim.Optimizer):
    """CLIP4Clip's (and the DRL family's) optimiser, for parity runs (methods spec §2.6).

    Adam **without bias correction** (beta1 0.9, beta2 0.98, eps 1e-6); each parameter's gradient is
    clipped to ``max_grad_norm`` before its update; decoupled weight decay is added to the update before
    the learning rate is applied: ``p -= lr * (m / (sqrt(v) + eps) + wd * p)``.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.0, max_grad_norm: float = 1.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(param, group["max_grad_norm"])
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(param, alpha=group["weight_decay"])
                param.add_(update, alpha=-group["lr"])
        return loss


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
    tower_parameter_ids: set[int] = frozenset(),
    tower_lr: float | None = None,
) -> list[dict]:
    """Split trainable parameters into backbone/head/tower x decay/no-decay groups (empty groups dropped).
    Tower parameters (adapters a tower adds inside CLIP) take ``tower_lr``, the head's rate when None."""
    patterns = list(no_decay_names)
    rates = {"backbone": backbone_lr, "head": head_lr, "tower": head_lr if tower_lr is None else tower_lr}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        owner = "tower" if id(param) in tower_parameter_ids else "head" if id(param) in new_parameter_ids else "backbone"
        buckets.setdefault((owner, is_no_decay(name, param, no_decay_1d, patterns)), []).append(param)
    groups = []
    for (owner, no_decay), params in sorted(buckets.items()):
        groups.append({
            "name": owner + ("_no_decay" if no_decay else ""),
            "params": params,
            "lr": rates[owner],
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
    return groups
