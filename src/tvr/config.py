"""Locating the Hydra config folder and turning composed configs into plain objects."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def config_dir() -> str:
    """``$TVR_CONFIG_DIR``, else ``conf/`` packaged inside tvr (wheel installs), else the repo's ``conf/``."""
    override = os.environ.get("TVR_CONFIG_DIR")
    if override:
        return str(Path(override).resolve())
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")


def to_plain(cfg: DictConfig | dict | None) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
