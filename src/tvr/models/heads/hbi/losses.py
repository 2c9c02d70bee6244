"""HBI's distillation losses (methods spec §3.7): per-level Banzhaf distillation and self-distillation.

Both are built on the reference's ``KL(a, b) = F.kl_div(log_softmax(a), softmax(b), reduction="mean")``
over the last dim: the mean over *all elements* (not per row), ``a`` the student, ``b`` the target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: How the second Banzhaf KL transposes ``[B, L, F]`` maps: ``reverse_all`` is the reference's ``.T``
#: (``[F, L, B]``, so that softmax runs over the batch); ``swap_last_two`` gives frame -> word rows.
BI_TRANSPOSES = ("reverse_all", "swap_last_two")


def kl_mean(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``softmax(b) (log softmax(b) - log softmax(a))`` averaged over every element; gradients reach both
    sides unless the caller detaches the target."""
    # "sum" / numel is the reference's "mean" without PyTorch's warning about it; log-probability targets
    # keep a target probability that underflows to 0 from turning into 0 * log 0 = NaN
    divergence = F.kl_div(
        student_logits.log_softmax(dim=-1), target_logits.log_softmax(dim=-1), reduction="sum", log_target=True
    )
    return divergence / student_logits.numel()


def _transposed(maps: torch.Tensor, transpose: str) -> torch.Tensor:
    if transpose == "reverse_all":
        return maps.permute(*reversed(range(maps.dim())))
    if transpose == "swap_last_two":
        return maps.transpose(-1, -2)
    raise ValueError(f"unknown bi_transpose '{transpose}'; valid choices: {', '.join(BI_TRANSPOSES)}")


def banzhaf_kl(student_maps: torch.Tensor, teacher_maps: torch.Tensor, transpose: str = "reverse_all") -> torch.Tensor:
    """``KL(P, Y) + KL(P^T, Y^T)`` of student and teacher interaction maps ``[B, L, F]``."""
    return kl_mean(student_maps, teacher_maps) + kl_mean(
        _transposed(student_maps, transpose), _transposed(teacher_maps, transpose)
    )


def banzhaf_distillation(
    maps: torch.Tensor,
    student: nn.Module,
    teacher: nn.Module,
    cell_mask: torch.Tensor | None = None,
    transpose: str = "reverse_all",
) -> torch.Tensor:
    """One level's Banzhaf loss from its positive-pair maps ``[B, L, F]``.

    The student sees the maps with gradient (into itself and the features); the teacher (the frozen
    pre-trained estimator) sees them detached, without gradient. At the entity level both outputs are
    multiplied by ``cell_mask`` (:func:`~tvr.models.heads.token_wise.pair_cell_mask`)."""
    student_maps = student(maps.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        teacher_maps = teacher(maps.detach().unsqueeze(1)).squeeze(1)
    if cell_mask is not None:
        student_maps, teacher_maps = student_maps * cell_mask, teacher_maps * cell_mask
    return banzhaf_kl(student_maps, teacher_maps, transpose)


def self_distillation(entity: torch.Tensor, action: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Coarse levels towards the entity level, both directions, on the unscaled ``[B, B]`` similarities;
    the entity target is not detached (reference)."""
    return (
        kl_mean(action.t(), entity.t())
        + kl_mean(event.t(), entity.t())
        + kl_mean(action, entity)
        + kl_mean(event, entity)
    )
