"""DiffusionRet's generation loss (methods spec §4.3, §4.6): each generator sees its queries' candidate lists
noised to ``x_t`` at the query's timestep and is trained, by a cross-entropy of ``d_temp · p`` against index 0,
to put the positive (always first) on top. The reference calls it a KL (``LossType.KL``); it is this CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tvr.models.heads.diffusionret.generator import RelevanceGenerator
from tvr.models.heads.diffusionret.schedule import CosineSchedule


def relevance_target(queries: int, candidates: int, neg: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``x₀ = [1, neg, …, neg]`` per query ``[queries, candidates]``: the positive first (``--neg``: 0 or −1)."""
    target = torch.full((queries, candidates), neg, dtype=dtype, device=device)
    target[:, 0] = 1.0
    return target


def generation_losses(
    t2v: RelevanceGenerator,
    v2t: RelevanceGenerator,
    schedule: CosineSchedule,
    eot: torch.Tensor,
    frames: torch.Tensor,
    frame_mask: torch.Tensor,
    t2v_cand: torch.Tensor,
    v2t_cand: torch.Tensor,
    t: torch.Tensor,
    noise_t2v: torch.Tensor,
    noise_v2t: torch.Tensor,
    d_temp: float = 100.0,
    neg: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Both directions' CE on a paired batch (text ``i`` with video ``i``): ``eot [B, D]``, ``frames [B, F, D]``,
    ``frame_mask [B, F]``, candidate lists ``[B, N]`` (:func:`.candidates.mine_candidates`), timesteps
    ``t [B]`` shared by the directions, q-sample noise ``[B, N]`` per direction.

    Returns ``loss_gen_t2v``, ``loss_gen_v2t`` and, for inspection, ``x_t_*`` and the raw outputs ``out_*``.
    ``x₀`` is float32 with the reference's coefficients (``coef_dtype="float32"``), else ``eot``'s dtype."""
    batch = eot.shape[0]
    for name, tensor in (("t2v_cand", t2v_cand), ("v2t_cand", v2t_cand), ("noise_t2v", noise_t2v)):
        if tensor.shape[0] != batch or tensor.shape[1:] != t2v_cand.shape[1:]:
            raise ValueError(f"{name} must have shape {[batch, t2v_cand.shape[1]]}, got {list(tensor.shape)}")
    if noise_v2t.shape != noise_t2v.shape:
        raise ValueError(f"noise_v2t must have shape {list(noise_t2v.shape)}, got {list(noise_v2t.shape)}")
    target_dtype = torch.float32 if schedule.parity else eot.dtype
    x0 = relevance_target(batch, t2v_cand.shape[1], neg, target_dtype, eot.device)
    x_t_t2v = schedule.q_sample(x0, t, noise_t2v)
    x_t_v2t = schedule.q_sample(x0, t, noise_v2t)
    out_t2v = t2v(x_t_t2v, t, eot, frames[t2v_cand], frame_mask[t2v_cand])
    out_v2t = v2t(x_t_v2t, t, eot[v2t_cand], frames, frame_mask)
    positive = torch.zeros(batch, dtype=torch.long, device=eot.device)
    return {
        "loss_gen_t2v": F.cross_entropy(d_temp * out_t2v, positive),
        "loss_gen_v2t": F.cross_entropy(d_temp * out_v2t, positive),
        "x_t_t2v": x_t_t2v,
        "x_t_v2t": x_t_v2t,
        "out_t2v": out_t2v,
        "out_v2t": out_v2t,
    }
