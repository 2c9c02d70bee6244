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


def compose_config(
    overrides: list[str], config_name: str = "train", output_dir: str | Path | None = None, cwd: str | Path | None = None
) -> DictConfig:
    """Compose a config outside ``@hydra.main`` (tools, notebooks, tests) so that ``${hydra:...}``
    interpolations resolve: the runtime cwd is the current directory, the output dir as given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or os.getcwd())
        cfg.hydra.runtime.cwd = str(cwd or os.getcwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
