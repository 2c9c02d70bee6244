"""UCoFiA's patch selection (methods spec §3.4): a score per patch token, then a differentiable top-k.

``PatchSelector`` scores every token of a frame with one of the two ``PredictorLG`` variants of the
reference's code copies (``ts2net``: TS2-Net's, in ``train/`` and ``eval_v2t/``; ``cvid``: ``eval_t2v/``'s,
with 2D inputs and the frame CLS features summed over the video, Q3) and keeps ``k`` patches per frame as
the average, over ``n_s`` noisy samples, of the one-hot indicators of the top-k of ``score + sigma * noise``
(the perturbed-optimiser top-k). Its backward is the perturbed optimiser's estimator, the only way
gradients reach the predictor. The Gaussian draws are an argument: the head decides where they come from
(its generator in training, the evaluation's seeded draws at evaluation, recorded ones in golden tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SELECTORS = ("ts2net", "cvid")


class PredictorLG(nn.Module):
    """Token scores in ``[-1, 1]`` from a token and its frame's CLS token (``ts2net``), or from both and the
    sum of the video's CLS features (``cvid``). Sequentials, so the keys are the reference's
    (``in_conv.0`` LayerNorm, ``in_conv.1`` / ``out_conv.0`` / ``out_conv.2`` Linears without bias)."""

    def __init__(self, dim: int, variant: str = "ts2net") -> None:
        super().__init__()
        if variant not in SELECTORS:
            raise ValueError(f"ucofia selector must be one of {', '.join(SELECTORS)}, got '{variant}'")
        self.variant = variant
        width_in = 2 * dim if variant == "cvid" else dim  # cvid scores [token ; frame CLS]
        hidden = dim if variant == "cvid" else dim // 2
        self.in_conv = nn.Sequential(nn.LayerNorm(width_in), nn.Linear(width_in, hidden, bias=False), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(2 * hidden, hidden, bias=False), nn.GELU(), nn.Linear(hidden, 1, bias=False), nn.Tanh()
        )
        for layer in (self.in_conv[1], self.out_conv[0], self.out_conv[2]):
            nn.init.normal_(layer.weight, std=0.02)  # the reference's model-wide init pass

    def forward(self, tokens: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        """``tokens [B*F, 1+N, D]`` (row 0 = CLS) -> scores ``[B*F, 1+N]``."""
        if self.variant == "cvid":
            tokens = torch.cat([tokens, tokens[:, :1].expand_as(tokens)], dim=-1)
        hidden = self.in_conv(tokens)
        context = hidden[:, :1]
        if self.variant == "cvid":  # the video's CLS features summed over all its frames (padded ones included)
            per_video = context.unflatten(0, (-1, frames_per_video)).sum(dim=1)
            context = per_video.repeat_interleave(frames_per_video, dim=0)
        return self.out_conv(torch.cat([hidden, context.expand_as(hidden)], dim=-1)).squeeze(-1)


def perturbed_topk_indices(scores: torch.Tensor, noise: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """``[B, n_s, k]``: per sample, the indices of the top-k of ``scores + sigma * noise``, sorted ascending."""
    perturbed = scores[:, None, :] + sigma * noise.to(scores.dtype)
    return perturbed.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


class PerturbedTopK(torch.autograd.Function):
    """Forward: ``[B, N]`` scores and ``[B, n_s, N]`` standard normal draws -> indicators ``[B, k, N]``, the
    mean over samples of the one-hot of the sorted top-k of ``scores + sigma * noise``. Backward: the
    perturbed optimiser's estimator ``d ind[b,k,j] / d s[b,j] = sum_n onehot[b,n,k,j] noise[b,n,j] / (n_s sigma)``."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, noise: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
        noise = noise.to(scores.dtype)
        chosen = perturbed_topk_indices(scores, noise, k, sigma)
        one_hot = F.one_hot(chosen, scores.shape[-1]).to(scores.dtype)  # in the run's dtype (spec Q12)
        ctx.save_for_backward(one_hot, noise)
        ctx.sigma = sigma
        return one_hot.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_indicators: torch.Tensor):
        one_hot, noise = ctx.saved_tensors
        samples = noise.shape[1]
        expected = torch.einsum("bnkd,bnd->bkd", one_hot, noise) / (samples * ctx.sigma)
        return torch.einsum("bkd,bkd->bd", grad_indicators, expected), None, None, None


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The deterministic selection (``topk_noise=none``): one-hot indicators of the sorted top-k."""
    chosen = scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return F.one_hot(chosen, scores.shape[-1]).to(scores.dtype)


class PatchSelector(nn.Module):
    """``VisualTokenSelection``: per frame, its CLS token and ``k`` soft-selected patch tokens."""

    def __init__(self, dim: int, k: int, samples: int, sigma: float, variant: str = "ts2net") -> None:
        super().__init__()
        self.k, self.samples, self.sigma = k, samples, sigma
        self.predictor = PredictorLG(dim, variant)

    def scores(self, frames: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``frames [B, F, D]`` (CLS) and ``patches [B, F, N, D]`` -> every token's score ``[B*F, 1+N]``."""
        tokens = torch.cat([frames[:, :, None], patches], dim=2).flatten(0, 1)
        return self.predictor(tokens, frames.shape[1])

    def indicators(self, scores: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``[B*F, k, N]`` from the patch scores (CLS column dropped); ``noise`` None selects deterministically."""
        patch_scores = scores[:, 1:]
        if noise is None:
            return hard_topk(patch_scores, self.k)
        return PerturbedTopK.apply(patch_scores, noise, self.k, self.sigma)

    def forward(self, frames: torch.Tensor, patches: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``[B, F*(1+k), D]``: per frame (frame-major) its CLS token, then its ``k`` selected patches."""
        batch, num_frames = frames.shape[:2]
        chosen = self.indicators(self.scores(frames, patches), noise) @ patches.flatten(0, 1)
        tokens = torch.cat([frames.flatten(0, 1)[:, None], chosen], dim=1)
        return tokens.reshape(batch, num_frames * (1 + self.k), -1)

    def noise_shape(self, batch: int, num_frames: int, patches: int) -> tuple[int, int, int]:
        return (batch * num_frames, self.samples, patches)
