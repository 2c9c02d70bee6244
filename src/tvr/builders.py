"""Build the run's parts from a composed config; shared by ``tvr-train``, ``tvr-eval`` and the tests.

Everything that can fail on a wrong name or a missing file is built here, before any training starts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment

from tvr.checkpoint import AtomicCheckpointIO
from tvr.config import to_plain
from tvr.data.datamodule import RetrievalDataModule
from tvr.data.transforms import Preprocessing
from tvr.errors import ConfigError
from tvr.evaluation.options import configured_reranker
from tvr.lit_module import RetrievalModule
from tvr.models.backbone import resolve_preprocessing
from tvr.resume import LastCheckpoint, SlurmRequeue

log = logging.getLogger(__name__)


def build_datamodule(
    data_cfg: DictConfig | dict, evaluation_cfg: DictConfig | dict | None = None, *, preprocessing: Preprocessing
) -> RetrievalDataModule:
    """``preprocessing``: the model's (``module.backbone.preprocessing``, or :func:`backbone_preprocessing`
    of the run's backbone config before the model is built)."""
    data = to_plain(data_cfg)
    reranker = configured_reranker(to_plain(evaluation_cfg))
    for key, bank in bank_needs(reranker).items():  # the other captions / videos a re-ranker reads
        data[key] = {"split": bank.split, "size": bank.size, "fraction": bank.fraction}
    return RetrievalDataModule(**data, preprocessing=preprocessing)


def bank_needs(reranker) -> dict:
    """``{"query_bank": need, "video_bank": need}``: the banks the configured re-ranker declares (none: {})."""
    if reranker is None:
        return {}
    needs = {"query_bank": reranker.query_bank(), "video_bank": reranker.video_bank()}
    return {key: need for key, need in needs.items() if need is not None}


def backbone_preprocessing(backbone_cfg: DictConfig | dict) -> Preprocessing:
    """The input the configured backbone takes, from its config alone (the one it has once built)."""
    backbone = to_plain(backbone_cfg)
    return resolve_preprocessing(backbone.get("model_name"), backbone.get("architecture"), backbone.get("pretrained"))


def build_module(cfg: DictConfig, starting: bool = True) -> RetrievalModule:
    """The training module the config describes. ``starting`` (a run about to train) also reads the weights a
    head takes from files of its own or from an earlier stage; a conversion, which overwrites every weight, does not."""
    module = RetrievalModule(
        backbone=to_plain(cfg.backbone),
        head=to_plain(cfg.head),
        loss=to_plain(cfg.loss),
        optim=to_plain(cfg.optim),
        evaluation=to_plain(cfg.evaluation),
        train=to_plain(cfg.train),
        run_config=to_plain(cfg),
    )
    if starting:
        module.head.load_pretrained()  # files the head takes weights from (HBI's estimator); checkpoints carry them after
        load_starting_weights(module)
    return module


def load_starting_weights(module: RetrievalModule) -> None:
    """An earlier stage's weights (DiffusionRet's stage 1) copied into the module's own tensors by name."""
    weights = module.head.starting_weights()
    if not weights:
        return
    own = module.state_dict()  # tensors sharing the parameters' storage
    unfit = sorted(key for key, value in weights.items() if key not in own or own[key].shape != value.shape)
    unfit += sorted(key for key in own if key.startswith("backbone.") and key not in weights)
    if unfit:
        raise ConfigError(
            "head.stage1_ckpt",
            f"has {len(unfit)} CLIP weights missing or not fitting this model (e.g. {unfit[0]}): another backbone?",
            "train stage 1 with the same backbone, or choose that backbone",
        )
    with torch.no_grad():
        for key, value in weights.items():
            own[key].copy_(value)
    log.info("started from %d weights of head.stage1_ckpt", len(weights))


def build_trainer(
    trainer_cfg: DictConfig | dict,
    run_dir: Path,
    logger_cfg=None,
    monitor: str | None = None,
    callbacks_cfg=None,
    checkpoint_every_n_steps: int = 0,
) -> pl.Trainer:
    """A Trainer writing ``checkpoints/last.ckpt`` (every epoch, every ``checkpoint_every_n_steps`` steps,
    at the end, and before SLURM requeues the job) and, when ``monitor`` names a validation metric,
    ``checkpoints/best.ckpt``."""
    loggers = [hydra.utils.instantiate(entry) for entry in (logger_cfg or {}).values()] or False
    callbacks = []
    if monitor:  # first, so that trainer.checkpoint_callback is the one that knows the best checkpoint
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    last = LastCheckpoint(run_dir / "checkpoints", every_n_steps=checkpoint_every_n_steps)
    callbacks.append(last)
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # requeue at a step boundary (SlurmRequeue), not mid-step as Lightning would
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(SlurmRequeue(last))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [hydra.utils.instantiate(entry) for entry in (callbacks_cfg or {}).values()]
    return pl.Trainer(
        **to_plain(trainer_cfg),
        logger=loggers,
        callbacks=callbacks,
        plugins=plugins,
        default_root_dir=str(run_dir),
    )
