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

from tvr.options import option


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

    The moments have the parameter's dtype and every operation is the reference's, in its order, so each
    intermediate is rounded where the reference rounds it: ``wd * p`` and ``lr * update`` are tensors of
    their own before they are added. For fp16 parameters (``train.clip_param_dtype=fp16``) that is the
    family's fp16 arithmetic: fp16 moments, ``v`` underflowing to 0 for small gradients, ``lr * update``
    rounded to fp16 (subnormal at lr 1e-7), and most weights not moving at all (methods spec §2.6, DRL Q8).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas=(0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ):
        super().__init__(
            params,
            {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm},
        )

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
                    update += group["weight_decay"] * param
                param.sub_(group["lr"] * update)
        return loss


def _two_betas(betas) -> str | None:
    fine = (
        isinstance(betas, (list, tuple))
        and len(betas) == 2
        and all(isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < 1 for beta in betas)
    )
    return None if fine else "expected two numbers in [0, 1)"


def _name_fragments(names) -> str | None:
    fine = isinstance(names, (list, tuple)) and all(isinstance(name, str) for name in names)
    return None if fine else "expected a list of parameter-name fragments"


@dataclass(frozen=True)
class OptimOptions:
    """The ``optim`` section. The defaults train the tiny synthetic run from scratch with AdamW
    (conf/optim/adamw.yaml); conf/optim/bertadam.yaml and paper recipes change what they need."""

    name: str = option(
        "adamw",
        choices=lambda: tuple(OPTIMISERS),
        help="adamw | bertadam (CLIP4Clip/DRL parity: no bias correction, per-parameter clipping)",
    )
    schedule: str = option(
        "warmup_cosine",
        choices=lambda: tuple(SCHEDULES),
        help="warmup_cosine | clip4clip_warmup_cosine (cosine over the whole run, jump at warm-up end)",
    )
    t_total_epochs: int | None = option(
        None, minimum=1, help="schedule length in epochs; null = the run (GLSCL hard-codes 5)"
    )
    backbone_lr: float = option(3.0e-3, minimum=0)
    head_lr: float = option(3.0e-3, minimum=0)
    tower_lr: float | None = option(
        None, minimum=0, help="what a tower adds inside CLIP (TempMe's LoRA); null = head_lr"
    )
    weight_decay: float = option(0.01, minimum=0)
    betas: list[float] = option([0.9, 0.98], check=_two_betas, expected="two numbers in [0, 1)")
    eps: float = option(1.0e-6, above=0)
    warmup_proportion: float = option(0.1, minimum=0, maximum=1)
    no_decay_1d: bool = option(True, help="1-D tensors (biases, LayerNorm affine, logit_scale) get no weight decay")
    no_decay_names: list[str] = option(
        ["positional_embedding", "position_embedding", "token_embedding", "class_embedding"],
        check=_name_fragments,
        expected="a list of parameter-name fragments",
        help="parameters whose names contain one of these get no weight decay",
    )
    fused: bool = option(True, help="adamw: single-kernel step in fp32 runs (mixed precision uses the foreach kernel)")
    max_grad_norm: float = option(1.0, minimum=0, help="bertadam: each parameter's gradient is clipped to this norm")


def build_adamw(groups: list[dict], options: OptimOptions, precision: str) -> torch.optim.Optimizer:
    # Lightning's AMP plugin clips gradients itself and refuses fused optimisers: fuse only in fp32.
    fused = options.fused and "mixed" not in precision
    return torch.optim.AdamW(groups, betas=tuple(options.betas), eps=options.eps, fused=fused or None)


def build_bertadam(groups: list[dict], options: OptimOptions, precision: str) -> torch.optim.Optimizer:
    return BertAdam(groups, betas=tuple(options.betas), eps=options.eps, max_grad_norm=options.max_grad_norm)


# name -> factory(parameter groups, options, trainer precision)
OPTIMISERS = {"adamw": build_adamw, "bertadam": build_bertadam}


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
        owner = (
            "tower" if id(param) in tower_parameter_ids else "head" if id(param) in new_parameter_ids else "backbone"
        )
        buckets.setdefault((owner, is_no_decay(name, param, no_decay_1d, patterns)), []).append(param)
    groups = []
    for (owner, no_decay), params in sorted(buckets.items()):
        groups.append(
            {
                "name": owner + ("_no_decay" if no_decay else ""),
                "params": params,
                "lr": rates[owner],
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return groups
