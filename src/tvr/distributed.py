"""Gathers across DDP ranks: tensors with a chosen gradient rule (contrastive losses over the global batch),
evaluation outputs without duplicates, and plain Python objects (RNG states, decode-failure counts).

Every rank computes the same global ``B x B`` loss from gathered embeddings. What flows back to the
local embeddings decides the parameter gradients after DDP averages them (methods spec §2.5):

* ``"sum"`` (default): the incoming gradients of all ranks are summed, then this rank's rows are kept.
  After DDP's averaging every parameter gets exactly the single-process full-batch gradient.
* ``"slice"``: only this rank's rows of its own incoming gradient are kept (CLIP4Clip's ``AllGather``).
  After averaging, parameters upstream of the gather get ``grad / world_size`` while ``logit_scale``
  gets the full gradient. Use it for bit-parity with CLIP4Clip training.

Batches may differ in size across ranks (e.g. a short last batch); they are padded for the collective.
Without a process group every gather returns this process's own data.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

GATHER_GRAD_MODES = ("sum", "slice")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_padded(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    longest = max(sizes)
    padded = tensor.contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, pad])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, mode: str) -> torch.Tensor:
        gathered, sizes = _gather_padded(tensor)
        ctx.sizes, ctx.mode, ctx.rank = sizes, mode, dist.get_rank()
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.mode == "sum":
            grad = grad.contiguous()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks in rank order (identity without a process group)."""
    if mode not in GATHER_GRAD_MODES:
        raise ValueError(f"gather grad mode must be one of {GATHER_GRAD_MODES}, got '{mode}'")
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor, mode)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks in rank order; sizes may differ."""
    if not is_distributed():
        return tensor
    return _gather_padded(tensor)[0]


def gather_objects(item) -> list:
    """``item`` from every rank, in rank order (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, item)
    return everyone


def gather_indexed(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Evaluation outputs of all ranks, one row per dataset item, in item order.

    ``parts`` are this rank's ``(item_indices, {name: tensor})`` batches. A DistributedSampler pads the
    last rank's share with repeated items so every rank runs the same number of steps; those repeats are
    dropped here by item index, so no item is counted twice. Raises if any item is missing.
    """
    index = torch.cat([idx for idx, _ in parts])
    tensors = {key: torch.cat([batch[key] for _, batch in parts]) for key in parts[0][1]}
    index = gather_no_grad(index.to(next(iter(tensors.values())).device))
    tensors = {key: gather_no_grad(value) for key, value in tensors.items()}
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    unique = sorted_index[first]
    if unique.tolist() != list(range(unique.numel())):
        raise RuntimeError(
            f"evaluation outputs are missing items: got {unique.numel()} distinct of {int(unique.max()) + 1}"
        )
    keep = order[first]
    return {key: value[keep] for key, value in tensors.items()}
