"""The ``train`` config section, declared once (see :mod:`tvr.options`): read by the training module and
``tvr-train``, validated at start-up from these fields."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Literal

from tvr.distributed import GATHER_GRAD_MODES
from tvr.evaluation.metrics import DEFAULT_KS
from tvr.options import option

# Logged by RetrievalModule when select_window > 1: the mean of the last N val/t2v_R1 evaluations (X-Pool).
WINDOW_METRIC = "val/t2v_R1_window"


def selectable_metrics(select_window: int) -> tuple[str, ...]:
    """Validation metrics a checkpoint can be selected on. The best checkpoint is the one with the highest
    value, so only metrics where higher is better qualify: a rank (MdR, MnR) would select the worst epoch."""
    recalls = tuple(
        f"val/{direction}_{name}" for direction in ("t2v", "v2t") for name in (*(f"R{k}" for k in DEFAULT_KS), "RSum")
    )
    return recalls + ((WINDOW_METRIC,) if select_window > 1 else ())


@dataclass(frozen=True)
class TrainOptions:
    gather_grad: str = option(
        "sum", choices=GATHER_GRAD_MODES, help="sum: DDP gradients = single-process full batch; slice: CLIP4Clip parity"
    )
    max_logit_scale: float = option(100.0, above=0, help="exp(logit_scale) is clamped to this after every step")
    select_metric: str = option("val/t2v_R1", help="checkpoint selection (used when the data config has a val split)")
    select_window: int = option(
        1, minimum=1, help=f">1: also log {WINDOW_METRIC}, the mean of the last N evaluations (X-Pool)"
    )
    freeze_layer_num: int = option(
        -1, minimum=-1, help="CLIP4Clip rule: >=0 freezes embeddings + blocks below N in both towers; -1: none"
    )
    freeze_patch_embedding: bool = option(
        False,
        help="freeze CLIP's patch embedding (visual.conv1), as the GLSCL, HBI, DiffusionRet and TempMe references",
    )
    clip_param_dtype: Literal["fp32", "fp16"] = option(
        "fp32",
        help="fp16: CLIP's Conv/Linear/attention weights and projections stored and updated (BertAdam, fp16 moments) "
        "in fp16, as the DRL/CLIP4Clip family's convert_weights on GPU; LayerNorms, embeddings, logit_scale and the "
        "head stay fp32 (parity with the references' GPU runs; needs optim=bertadam and trainer.precision=32-true)",
    )
    checkpoint_every_n_steps: int = option(
        0, minimum=0, help="also write checkpoints/last.ckpt every N optimiser steps (0: at epoch ends only)"
    )
    nonfinite: Literal["stop", "skip"] = option(
        "stop", help="NaN/inf loss or gradient: stop (naming the step) | skip (skip the step, count it)"
    )
    compile: bool = option(
        False, help="torch.compile the video and text towers (the backbone runs inside them); same weights and keys"
    )


def compile_unavailable(accelerator: str) -> str | None:
    """Why ``torch.compile`` cannot run here for the trainer's ``accelerator``, or None when it can: inductor
    generates Triton kernels on a GPU and C++ on the CPU, which it builds with ``$CXX`` (g++ by default)."""
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        from torch.utils._triton import has_triton_package

        return None if has_triton_package() else "torch.compile on the GPU needs Triton, which this environment lacks"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return f"torch.compile on the CPU needs a C++ compiler and '{compiler}' ($CXX, or g++) was not found"
    return None
