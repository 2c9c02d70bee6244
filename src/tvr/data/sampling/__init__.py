"""Frame samplers, one module each, registered by name (see :mod:`tvr.data.sampling.base`)."""

from tvr.data.sampling.base import SAMPLERS, FrameSampler, create_sampler

__all__ = ["SAMPLERS", "FrameSampler", "create_sampler"]
