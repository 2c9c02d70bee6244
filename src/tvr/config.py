"""Locating the Hydra config folder and turning composed configs into plain objects."""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tvr.sweep import register_resolvers

register_resolvers()  # before any config of tvr's is composed or resolved


def store_declared_defaults() -> None:
    """The defaults of the sections declared as typed options, as configs Hydra composes: ``optim/options``
    (which conf/optim/*.yaml extend), ``train/default`` and ``evaluation/default`` (one block per registered
    re-ranker). The declarations stay the one place each default is written."""
    from hydra.core.config_store import ConfigStore

    from tvr.evaluation.options import evaluation_defaults
    from tvr.optim import OptimOptions
    from tvr.options import defaults_of
    from tvr.train_options import TrainOptions

    store = ConfigStore.instance()
    store.store(group="optim", name="options", node=defaults_of(OptimOptions))
    store.store(group="train", name="default", node=defaults_of(TrainOptions))
    store.store(group="evaluation", name="default", node=evaluation_defaults())


store_declared_defaults()  # likewise

# The parts of a run's config a checkpoint carries into tvr-eval, where each key stays overridable.
CHECKPOINT_CONFIG_SECTIONS = ("data", "backbone", "head", "loss", "optim", "train", "evaluation")


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


def saved_run_config(ckpt_path: str | Path) -> dict | None:
    """The composed config a tvr checkpoint was trained (or converted) with, or None if it has none."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return (hyper_parameters or {}).get("run_config") or None


def relink_to_data_root(data: dict) -> dict:
    """The saved config is resolved, so paths derived from the data root (the frame cache, annotation and
    video folders) would keep pointing at the old place after ``data.source.root=/new/place``: turn them
    back into ``${data.source.root}/...`` interpolations."""
    root = str((data.get("source") or {}).get("root") or "")

    def relink(value, is_root: bool = False):
        if isinstance(value, dict):
            return {
                key: relink(item, is_root=value is data.get("source") and key == "root") for key, item in value.items()
            }
        if root and isinstance(value, str) and not is_root and value.startswith(root + "/"):
            return "${data.source.root}" + value[len(root) :]
        return value

    return relink(data)


def upgrade_saved_config(run_config: dict) -> dict:
    """A run config saved in a checkpoint by an older tvr, in today's keys: each step below names the
    change it undoes, so a checkpoint of any earlier main evaluates as it did
    (``tests/fixtures/legacy/`` holds one written before the first step)."""
    run_config = copy.deepcopy(run_config)
    evaluation = run_config.get("evaluation") or {}
    if "dsl_temperature" in evaluation:  # re-rankers declare their options in a block of their own
        evaluation.setdefault("dsl", {})["temperature"] = evaluation.pop("dsl_temperature")
    # backbone.image_size and data.image_size: the input size is the backbone's own (its Preprocessing), no
    # longer a config key; a saved value was always the architecture's (the run checked it at start-up)
    for section in ("backbone", "data"):
        if isinstance(run_config.get(section), dict):
            run_config[section].pop("image_size", None)
    return run_config


def with_checkpoint_config(overrides: list[str]) -> list[str]:
    """tvr-eval's command line plus a config search path holding the checkpoint's own config
    (``checkpoint/saved.yaml``, which ``eval.yaml`` merges in), so that every key the checkpoint was
    trained with can be overridden as written (``data.source.root=...``, ``head.local_weight=...``).
    ``data=<name>`` replaces the checkpoint's data section with that dataset's config. An unreadable or
    absent checkpoint adds nothing: ``tvr-eval`` then reports the file itself."""
    ckpt_path = next((item.split("=", 1)[1] for item in overrides if item.startswith("ckpt_path=")), None)
    if not ckpt_path or not Path(ckpt_path).is_file():
        return overrides
    try:
        saved = saved_run_config(ckpt_path)
    except Exception:  # reported with the file's name by tvr-eval, which reads it again
        return overrides
    if saved is None:
        return overrides
    saved = upgrade_saved_config(saved)
    sections = {key: saved[key] for key in CHECKPOINT_CONFIG_SECTIONS if key in saved}
    named = {item.lstrip("+").split("=", 1)[0]: item.split("=", 1)[1] for item in overrides if "=" in item}
    # data=<name> / head=<another head> choose that config whole, not a mix of it and the checkpoint's
    # (head=<the checkpoint's own head> keeps the settings it was trained with)
    if "data" in named:
        sections.pop("data", None)
    if "head" in named and named["head"] != (sections.get("head") or {}).get("name"):
        sections.pop("head", None)
    if "data" in sections:
        sections["data"] = relink_to_data_root(sections["data"])
    folder = Path(tempfile.mkdtemp(prefix="tvr-eval-config-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "checkpoint").mkdir()
    OmegaConf.save(OmegaConf.create(sections), folder / "checkpoint" / "saved.yaml")
    return [*overrides, f"hydra.searchpath=[file://{folder}]"]


def compose_config(
    overrides: list[str],
    config_name: str = "train",
    output_dir: str | Path | None = None,
    cwd: str | Path | None = None,
) -> DictConfig:
    """Compose a config outside ``@hydra.main`` (tools, notebooks, tests) so that ``${hydra:...}``
    interpolations resolve: the runtime cwd is the current directory, the output dir as given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if config_name == "eval":
        overrides = with_checkpoint_config(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or os.getcwd())
        cfg.hydra.runtime.cwd = str(cwd or os.getcwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
