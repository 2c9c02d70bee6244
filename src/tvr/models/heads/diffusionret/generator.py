"""DiffusionRet's relevance generators (methods spec §4.5): the denoisers that predict a query's relevance
vector ``x₀`` over its candidates from a noisy one ``x_t``, the timestep, the query and the candidates.

One class for both directions; they differ only in which side is pooled and which side is the query:

* ``t2v`` (the reference's ``Diffusion``): the query is a text's EOT feature ``c``, each candidate a video
  ``V_i`` (frames + mask), pooled by ``c``: ``u_i = Σ_f α_if V_if``. Query vector ``c``, candidate vectors ``u_i``.
* ``v2t`` (``Diffusion_v``): the query is a video ``V``, each candidate a text's EOT ``c_i``; the video is pooled
  once per candidate, ``u_i = Σ_f α_if V_f``. Query vectors ``u_i`` (one per candidate), candidate vectors ``c_i``.

Then, with the time embedding ``e``: ``a = softmax_i(⟨W_q(query + e), W_k(cand_i + e)⟩ + x_i)`` (no ``1/√D``;
``x`` enters only here), ``z = proj(Σ_i a_i W_v(cand_i + e))`` and ``p_i = decoder([z ; pooled-or-text_i]) + a_i``.
The candidates carry no positional information, so the generator is permutation-equivariant over them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

DIRECTIONS = ("t2v", "v2t")


def timestep_table(rows: int, width: int) -> torch.Tensor:
    """The sinusoidal table ``pe[t, 2i] = sin(t·ω_i)``, ``pe[t, 2i+1] = cos(t·ω_i)``,
    ``ω_i = exp(−2i·ln(10000)/D)`` ``[rows, D]``, computed in float32 as the reference's
    ``PositionalEncoding`` (float32 ``exp``/``sin`` differ by a few ulps between torch builds)."""
    position = torch.arange(rows, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(rows, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class TimestepEmbedder(nn.Module):
    """``e(t) = Linear(SiLU(Linear(pe[t])))``; ``time_embed`` is the reference's key."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.time_embed(rows)


class RelevanceGenerator(nn.Module):
    """One direction's denoiser; parameter names are the reference's within ``diffusion_model(_v).``.

    ``pool_temp`` divides the frame-pooling logits (the reference's ``temp = 1``); ``pool_renorm=True``
    renormalises the masked frame softmax over the real frames (quirk Q9's clean option; the reference
    multiplies the softmax by the mask, so padded frames absorb mass that is then dropped)."""

    def __init__(
        self,
        width: int,
        direction: Literal["t2v", "v2t"],
        pool_temp: float = 1.0,
        pool_renorm: bool = False,
        init_std: float = 0.02,
        max_timesteps: int = 5000,
    ) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"generator direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
        if pool_temp <= 0:
            raise ValueError(f"generator pool_temp must be > 0, got {pool_temp}")
        self.width = width
        self.direction = direction
        self.pool_temp = pool_temp
        self.pool_renorm = pool_renorm
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)
        self.embed_timestep = TimestepEmbedder(width)
        self.decoder = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1))
        # a constant of the width: recomputed, never saved (the reference's two ``pe`` buffers are dropped)
        self.register_buffer("timestep_table", timestep_table(max_timesteps, width), persistent=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # the reference's model-wide init pass reaches the generators
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def pool_weights(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``softmax_f(⟨text, frame_f⟩ / pool_temp)`` ``[..., F]`` before masking; ``text [..., D]`` and
        ``frames [..., F, D]`` broadcast."""
        logits = (frames @ text[..., :, None]).squeeze(-1) / self.pool_temp
        return logits.softmax(dim=-1)

    def pool(self, weights: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``Σ_f (weight · mask)_f · frame_f`` ``[..., D]`` (renormalised over the real frames with
        ``pool_renorm``)."""
        weights = weights * mask.to(weights.dtype)
        if self.pool_renorm:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        return (weights[..., None, :] @ frames).squeeze(-2)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        video_emb: torch.Tensor,
        video_mask: torch.Tensor,
        record: dict | None = None,
    ) -> torch.Tensor:
        """Predicted ``x₀`` ``[b, N]`` (raw, before any clamp) from the noisy relevance ``x [b, N]`` at
        timesteps ``t [b]``. Shapes: t2v ``text_emb [b, D]``, ``video_emb [b, N, F, D]``, ``video_mask [b, N, F]``;
        v2t ``text_emb [b, N, D]``, ``video_emb [b, F, D]``, ``video_mask [b, F]``. ``record`` (a dict) receives
        the intermediates under the golden fixture's names."""
        self._check_shapes(x, t, text_emb, video_emb, video_mask)
        time_emb = self.embed_timestep(self.timestep_table[t].to(text_emb.dtype))  # [b, D]
        if self.direction == "t2v":
            pool_weight = self.pool_weights(text_emb[:, None, :], video_emb)  # [b, N, F]
            pooled = self.pool(pool_weight, video_emb, video_mask)  # [b, N, D]
            q_in = text_emb + time_emb  # one query vector [b, D]
            candidates = pooled
        else:
            pool_weight = self.pool_weights(text_emb, video_emb[:, None, :, :])
            pooled = self.pool(pool_weight, video_emb[:, None, :, :], video_mask[:, None, :])  # [b, N, D]
            q_in = pooled + time_emb[:, None, :]  # one query vector per candidate [b, N, D]
            candidates = text_emb
        q = self.q_proj(q_in)
        k_in = candidates + time_emb[:, None, :]
        k = self.k_proj(k_in)
        v = self.v_proj(k_in)
        query_terms = q[:, None, :] if q.dim() == 2 else q
        attn = ((query_terms * k).sum(dim=-1) + x.to(k.dtype)).softmax(dim=-1)  # [b, N]
        attn_out = self.proj((attn[..., None] * v).sum(dim=1))  # [b, D]
        decoder_in = torch.cat([attn_out[:, None, :].expand_as(candidates), candidates], dim=-1)
        decoder_out = self.decoder(decoder_in).squeeze(-1)
        out = decoder_out + attn
        if record is not None:
            record.update(
                time_emb=time_emb,
                pool_weight=pool_weight,
                q_in=q_in,
                k_in=k_in,
                q=q,
                k=k,
                v=v,
                attn=attn,
                attn_out=attn_out,
                decoder_out=decoder_out,
                out=out,
            )
            if self.direction == "t2v":
                record["pooled"] = pooled
        return out

    def _check_shapes(self, x, t, text_emb, video_emb, video_mask) -> None:
        video_dims = 4 if self.direction == "t2v" else 3
        if x.dim() != 2 or video_emb.dim() != video_dims:
            raise ValueError(
                f"{self.direction} generator: x must be [b, N] and video_emb {video_dims}-D, got "
                f"{list(x.shape)} and {list(video_emb.shape)}"
            )
        batch, candidates = x.shape
        if self.direction == "t2v":
            expected = {
                "text_emb": (batch, self.width),
                "video_emb": (batch, candidates, video_emb.shape[2], self.width),
                "video_mask": (batch, candidates, video_emb.shape[2]),
            }
        else:
            expected = {
                "text_emb": (batch, candidates, self.width),
                "video_emb": (batch, video_emb.shape[1], self.width),
                "video_mask": (batch, video_emb.shape[1]),
            }
        given = {"text_emb": text_emb, "video_emb": video_emb, "video_mask": video_mask}
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(
                    f"{self.direction} generator: {name} must have shape {list(shape)} for x of shape "
                    f"{[batch, candidates]}, got {list(given[name].shape)}"
                )
        if tuple(t.shape) != (batch,):
            raise ValueError(f"{self.direction} generator: t must have shape [{batch}], got {list(t.shape)}")
