"""DiffusionRet's noise schedule and its two uses: noising a relevance vector (training) and one DDIM step
(inference). Methods spec §4.2, §4.3, §5 and quirk Q6.

The reference is improved-DDPM's ``GaussianDiffusion`` wrapped in a ``SpacedDiffusion`` that keeps every step:
cosine ``ᾱ``, ``x₀``-prediction, no learned variance, ``eta = 0``. Its tables are float64, but
``_extract_into_tensor`` casts every coefficient to float32 before use, whatever the model's dtype, and
``x₀``/``x_T`` are float32 too. ``coef_dtype="float32"`` reproduces that rounding (and the float32 arithmetic it
implies), ``"model"`` uses the float64 tables in the model's dtype (≤ 3e-8 on the fused scores, spec §12).
"""

from __future__ import annotations

import math

import torch

COEF_DTYPES = ("float32", "model")
#: The table names :meth:`CosineSchedule.coefficient` accepts.
COEFFICIENTS = (
    "betas_raw",
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)


def _cosine_alpha_bar(fraction: float) -> float:
    """``ᾱ(s) = cos²(((s/T) + 0.008) / 1.008 · π/2)`` with ``fraction = s/T`` (Nichol & Dhariwal's offset)."""
    return math.cos((fraction + 0.008) / 1.008 * math.pi / 2) ** 2


class CosineSchedule:
    """The cosine schedule of ``steps`` diffusion steps, every table float64 on the CPU.

    ``betas_raw`` is ``get_named_beta_schedule("cosine")`` (computed with Python floats, as the reference);
    ``betas`` is what ``SpacedDiffusion`` recomputes from the cumulative product and uses
    (``1 − ᾱ_i/ᾱ_{i−1}``, ≤ 1e-16 from ``betas_raw``); everything else derives from ``betas``."""

    def __init__(self, steps: int, max_beta: float = 0.999, coef_dtype: str = "float32") -> None:
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        if coef_dtype not in COEF_DTYPES:
            raise ValueError(f"coef_dtype must be one of {', '.join(COEF_DTYPES)}, got '{coef_dtype}'")
        self.steps = steps
        self.max_beta = max_beta
        self.coef_dtype = coef_dtype
        raw = [
            min(1.0 - _cosine_alpha_bar((i + 1) / steps) / _cosine_alpha_bar(i / steps), max_beta) for i in range(steps)
        ]
        self.betas_raw = torch.tensor(raw, dtype=torch.float64)
        raw_cumprod = torch.cumprod(1.0 - self.betas_raw, dim=0)
        self.betas = 1.0 - raw_cumprod / _shifted_right(raw_cumprod)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.alphas_cumprod_prev = _shifted_right(self.alphas_cumprod)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}  # tables in use, per device

    @property
    def parity(self) -> bool:
        """Whether coefficients are rounded to float32 as the reference's ``_extract_into_tensor``."""
        return self.coef_dtype == "float32"

    def _table(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Rows ``t`` of a table ``[b, 1]`` in the coefficient arithmetic's dtype (float32 in parity, else
        float64), on ``t``'s device."""
        if name not in COEFFICIENTS:
            raise ValueError(f"unknown schedule coefficient '{name}'; one of {', '.join(COEFFICIENTS)}")
        if t.dtype != torch.long or t.dim() != 1:
            raise ValueError(f"timesteps must be a 1-D int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and not 0 <= int(t.min()) <= int(t.max()) < self.steps:
            # (on an accelerator the lookup's own bounds check stops a bad index, without a sync per step)
            raise ValueError(f"timesteps must lie in [0, {self.steps - 1}], got [{int(t.min())}, {int(t.max())}]")
        key = (name, t.device)
        if key not in self._on_device:
            table = getattr(self, name)
            self._on_device[key] = (table.float() if self.parity else table).to(t.device)
        return self._on_device[key][t, None]

    def coefficient(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` as ``[b, 1]`` in ``like``'s dtype and device (rounded to float32 first in parity)."""
        return self._table(name, t.to(like.device)).to(like.dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε`` ``[b, N]``, in the inputs' promoted dtype. In parity the sum is
        computed in float32, as the reference's (float32 ``x₀``, noise and coefficients)."""
        result_dtype = torch.promote_types(x0.dtype, noise.dtype)
        work = torch.float32 if self.parity else result_dtype
        signal = self._table("sqrt_alphas_cumprod", t.to(x0.device)).to(work)
        spread = self._table("sqrt_one_minus_alphas_cumprod", t.to(x0.device)).to(work)
        return (signal * x0.to(work) + spread * noise.to(work)).to(result_dtype)

    def ddim_step(
        self, x_t: torch.Tensor, t: torch.Tensor, predicted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step (``eta = 0``) from the generator's raw ``x₀`` prediction:
        ``x̂₀ = clamp(p, −1, 1)``, ``ε̂ = (√(1/ᾱ_t)·x_t − x̂₀) / √(1/ᾱ_t − 1)``,
        ``x_{t−1} = x̂₀·√ᾱ_prev + √(1 − ᾱ_prev)·ε̂``. Returns ``(x_{t−1}, x̂₀)``.

        As the reference, ``√(1/ᾱ_t)·x_t`` takes ``x_t``'s dtype (float32 at the first step from a float32
        ``x_T``) and ``√ᾱ_prev``, ``√(1 − ᾱ_prev)`` are taken in the coefficient dtype; with ``"model"``
        everything is in the promoted dtype of ``x_t`` and ``predicted``."""
        if not self.parity:
            x_t = x_t.to(torch.promote_types(x_t.dtype, predicted.dtype))
        x0_hat = predicted.clamp(-1.0, 1.0)
        eps = (self.coefficient("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0_hat) / self.coefficient(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )
        alpha_bar_prev = self._table("alphas_cumprod_prev", t.to(x_t.device))
        keep = alpha_bar_prev.sqrt().to(x0_hat.dtype)
        noise_scale = (1.0 - alpha_bar_prev).sqrt().to(eps.dtype)
        return x0_hat * keep + noise_scale * eps, x0_hat


def _shifted_right(cumprod: torch.Tensor) -> torch.Tensor:
    """``[1, c_0, …, c_{T−2}]``: each step's predecessor in a cumulative product."""
    return torch.cat([cumprod.new_ones(1), cumprod[:-1]])
