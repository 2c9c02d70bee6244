"""``tvr-train``: fit, select the best checkpoint on the val split, test it, write the results.

Run folder (``hydra.run.dir``): ``checkpoints/{best,last}.ckpt``, ``metrics.json``, ``results.md``
(or ``error.json`` if the run failed), the logger's files, and Hydra's ``.hydra/`` config record.
``ckpt_path=last`` continues the run in that folder (:mod:`tvr.resume`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from tvr import __version__
from tvr.atomic import write_json
from tvr.builders import backbone_preprocessing, build_datamodule, build_module, build_trainer
from tvr.config import config_dir, to_plain
from tvr.errors import UserInputError, exit_on_user_error
from tvr.evaluation.report import decode_failure_summary, markdown_table, measured_block
from tvr.resume import (
    CHECKPOINT_DIR,
    LAST,
    check_same_run,
    newest_checkpoint,
    remove_orphan_temp_files,
    resolve_resume,
    with_resume_run_dir,
)
from tvr.run_folder import hydra_record_kept, refuse_run_dir_inside_data
from tvr.validation import validate_train_config

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig, module, datamodule, trainer: pl.Trainer) -> dict:
    data = datamodule.describe()
    # pairs each loss sees (its negatives): data.batch_size, or each process's share when the set is smaller
    contrastive_batch = datamodule.train_batch * trainer.world_size
    global_batch = contrastive_batch * trainer.accumulate_grad_batches  # pairs per optimiser step
    return {
        "tvr_version": __version__,
        "head": cfg.head.name,
        "towers": {kind: tower.identity() for kind, tower in module.head.towers().items()},  # which, and their settings
        "backbone": module.backbone.model_name,
        "backbone_weights": module.backbone.weights_source,
        "dataset": data.pop("dataset"),
        "seed": cfg.seed,
        "global_batch": global_batch,
        "contrastive_batch": contrastive_batch,
        "frames": datamodule.eval_sampler.max_frames,
        "sampler": data["eval_sampler"]["sampler"],
        "rerank": cfg.evaluation.rerank,
        "selection_split": datamodule.split_names.get("val"),
        "loss": cfg.loss.name,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "gather_grad": cfg.train.gather_grad,
        "freeze_patch_embedding": cfg.train.freeze_patch_embedding,
        "clip_param_dtype": cfg.train.clip_param_dtype,
        "compile": cfg.train.compile,
        "data": data,
        "train_set": train_set_size(datamodule),
    }


def train_set_size(datamodule) -> dict:
    records = datamodule.records["train"]
    return {
        "split": records.name,
        "pairs": len(records.texts),
        "videos": len(records.videos),
        "missing_videos": records.info.get("missing_videos", 0),
    }


def train(cfg: DictConfig) -> dict:
    validate_train_config(cfg)
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temp_files(run_dir / CHECKPOINT_DIR)
    resume_from = resolve_resume(cfg.get("ckpt_path"), run_dir)
    if resume_from is not None:
        check_same_run(resume_from, to_plain(cfg))
        log.info("continuing from %s", resume_from)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    module = build_module(cfg)
    module.part_started = started  # the data preparation above is part of the run's time
    monitor = cfg.train.select_metric if datamodule.has_val else None
    trainer = build_trainer(
        cfg.trainer,
        run_dir,
        cfg.get("logger"),
        monitor=monitor,
        callbacks_cfg=cfg.get("callbacks"),
        checkpoint_every_n_steps=cfg.train.checkpoint_every_n_steps,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    train_failures = module.gather_train_failures()
    train_short_videos = module.gather_train_short_videos()
    best = trainer.checkpoint_callback.best_model_path if monitor else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if not trainer.is_global_zero:
        return {}
    facts = run_facts(cfg, module, datamodule, trainer)
    facts["selection"] = f"best {monitor}" if monitor else "last epoch"
    facts["checkpoint"] = best or str(run_dir / CHECKPOINT_DIR / LAST)
    facts["resumed_from"] = str(resume_from) if resume_from else None
    facts["skipped_nonfinite_steps"] = module.skipped_nonfinite_steps
    facts["wall_time_s"] = round(module.wall_time_s(), 1)  # every part of a resumed run
    test_split = datamodule.split_names["test"]
    test_metrics = module.eval_results["test"]
    measured = measured_block(
        test_split,
        test_metrics,
        datamodule.records["test"].info.get("missing_videos", 0),
        cfg.evaluation.rerank,
        facts["selection_split"],
        facts["selection"],
        train_short_videos,
    )
    failures = decode_failure_summary(
        train_failures, {stage: module.decode_failures[stage] for stage in ("val", "test")}
    )
    results = {"split": test_split, **test_metrics, "measured": measured, "run": facts, "decode_failures": failures}
    if cfg.get("expected"):
        results["expected"] = to_plain(cfg.expected)  # the paper's numbers this recipe reproduces
    if "val" in module.eval_results:
        results["val_last_epoch"] = {k: module.eval_results["val"][k] for k in ("t2v", "v2t")}
    artifacts = module.head.write_artifacts(run_dir)  # the selected weights' (trainer.test restored them)
    if artifacts:
        results["artifacts"] = [str(path) for path in artifacts]
        log.info("wrote %s", ", ".join(results["artifacts"]))
    write_json(run_dir / "metrics.json", results)
    table = markdown_table(
        {test_split: test_metrics},
        {k: facts[k] for k in ("head", "backbone", "dataset", "frames", "sampler", "global_batch", "seed")},
        measured,
    )
    (run_dir / "results.md").write_text(table)
    print("\n" + table)
    log.info("run folder: %s", run_dir)
    return results


@contextlib.contextmanager
def failure_recorded(run_dir: Path):
    """``error.json`` in the run folder when the run fails, so that ``tvr-results`` lists the failure with
    its error beside the finished runs of a sweep; a later successful resume removes it. Bad input refused in a
    folder that already holds a run (``ckpt_path`` missing, another head) is not that run's failure: its
    records stay as they were."""
    error_file = run_dir / "error.json"
    holds_earlier_run = newest_checkpoint(run_dir) is not None or (run_dir / "metrics.json").is_file()
    try:
        yield
    except Exception as error:
        if rank_zero_only.rank == 0 and not (holds_earlier_run and isinstance(error, UserInputError)):
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                error_file, {"type": type(error).__name__, "message": str(error), "step": getattr(error, "step", None)}
            )
        raise
    if rank_zero_only.rank == 0:
        error_file.unlink(missing_ok=True)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    with failure_recorded(Path(cfg.paths.output_dir)):
        train(cfg)


def main() -> None:
    """Console entry: a resumed run (``ckpt_path=...``) continues in its own run folder."""
    sys.argv = [sys.argv[0], *with_resume_run_dir(sys.argv[1:])]
    refuse_run_dir_inside_data(sys.argv[1:], "train")  # before Hydra writes its record there
    with hydra_record_kept(sys.argv[1:]):
        _hydra_main()


if __name__ == "__main__":
    main()
