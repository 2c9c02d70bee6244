"""Which model an index was built with, and getting it back: a tvr checkpoint, or a backbone evaluated
zero-shot (its CLIP weights file and a freshly initialised head). The record lives in the index's manifest."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from tvr.config import to_plain
from tvr.data.sampling import FrameSampler, create_sampler
from tvr.errors import ConfigError
from tvr.models.retriever import Retriever

# Zero-shot models have no training data config to take the sampler from: CLIP4Clip's evaluation setting.
ZERO_SHOT_SAMPLER = {"name": "clip4clip", "max_frames": 12}
ZERO_SHOT_MAX_WORDS = 32


def model_record(cfg: DictConfig) -> dict:
    """What ``tvr-index``'s config names as the model: ``ckpt_path=...``, or ``backbone=... head=...``."""
    if cfg.get("ckpt_path"):
        return {"kind": "checkpoint", "ckpt_path": str(Path(cfg.ckpt_path).resolve())}
    if cfg.get("backbone") is None or cfg.get("head") is None:
        raise ConfigError(
            "ckpt_path",
            "has no value and no zero-shot model is chosen",
            "pass ckpt_path=<run dir>/checkpoints/best.ckpt, or backbone=<name> backbone.weights=<CLIP file> head=meanpool",
        )
    backbone = to_plain(cfg.backbone)
    if backbone.get("weights"):
        backbone["weights"] = str(Path(backbone["weights"]).resolve())
    return {"kind": "zero-shot", "backbone": backbone, "head": to_plain(cfg.head)}


def load_retriever(record: dict, ckpt_path: str | None = None) -> Retriever:
    """The model a record names; ``ckpt_path`` points at the same checkpoint moved elsewhere."""
    if record["kind"] == "checkpoint":
        path = ckpt_path or record["ckpt_path"]
        if not Path(path).is_file():
            raise ConfigError(
                "ckpt_path",
                f"the index's checkpoint {path} does not exist",
                "pass ckpt_path=<where the checkpoint is now>",
            )
        return Retriever.from_checkpoint(path)
    # A zero-shot head (and a backbone without a weights file) starts from random weights; a fixed seed
    # makes reopening the index rebuild the very model its identity hash names.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Retriever(record["backbone"], record["head"]).eval()


def data_settings(retriever: Retriever, record: dict, sampler_override: dict | None = None) -> tuple[FrameSampler, int]:
    """How videos are sampled and queries cut for this model: the checkpoint's evaluation sampler and
    ``max_words`` (CLIP4Clip's for a zero-shot model), unless a sampler is given."""
    data = ((getattr(retriever, "run_config", None) or {}).get("data") or {}) if record["kind"] == "checkpoint" else {}
    sampler = sampler_override or (data.get("video") or {}).get("eval_sampler") or ZERO_SHOT_SAMPLER
    return create_sampler(**sampler), int(data.get("max_words", ZERO_SHOT_MAX_WORDS))
