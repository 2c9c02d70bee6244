"""``tvr-train``: fit, select the best checkpoint on the val split, test it, write the results.

Run folder (``hydra.run.dir``): ``checkpoints/{best,last}.ckpt``, ``metrics.json``, ``results.md``,
the logger's files, and Hydra's ``.hydra/`` config record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from tvr import __version__
from tvr.builders import build_datamodule, build_module, build_trainer
from tvr.config import config_dir, to_plain
from tvr.errors import exit_on_user_error
from tvr.evaluation.report import decode_failure_summary, markdown_table, measured_block, write_json
from tvr.validation import validate_train_config

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig, module, datamodule, trainer: pl.Trainer) -> dict:
    data = datamodule.describe()
    contrastive_batch = cfg.data.batch_size * trainer.world_size  # pairs each loss sees (its negatives)
    global_batch = contrastive_batch * trainer.accumulate_grad_batches  # pairs per optimiser step
    return {
        "tvr_version": __version__,
        "head": cfg.head.name,
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
        "data": data,
        "train_set": train_set_size(datamodule),
    }


def train_set_size(datamodule) -> dict:
    records = datamodule.records["train"]
    return {"split": records.name, "pairs": len(records.texts), "videos": len(records.videos),
            "missing_videos": records.info.get("missing_videos", 0)}


def train(cfg: DictConfig) -> dict:
    validate_train_config(cfg)
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.evaluation)
    module = build_module(cfg)
    monitor = cfg.train.select_metric if datamodule.has_val else None
    trainer = build_trainer(cfg.trainer, run_dir, cfg.get("logger"), monitor=monitor, callbacks_cfg=cfg.get("callbacks"))
    trainer.fit(module, datamodule=datamodule)
    train_failures = module.gather_train_failures()
    best = trainer.checkpoint_callback.best_model_path if monitor else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if not trainer.is_global_zero:
        return {}
    facts = run_facts(cfg, module, datamodule, trainer)
    facts["selection"] = f"best {monitor}" if monitor else "last epoch"
    facts["checkpoint"] = best or str(run_dir / "checkpoints" / "last.ckpt")
    facts["wall_time_s"] = round(time.perf_counter() - started, 1)
    test_split = datamodule.split_names["test"]
    test_metrics = module.eval_results["test"]
    measured = measured_block(test_split, test_metrics, datamodule.records["test"].info.get("missing_videos", 0),
                              cfg.evaluation.rerank, facts["selection_split"], facts["selection"])
    failures = decode_failure_summary(train_failures, {stage: module.decode_failures[stage] for stage in ("val", "test")})
    results = {"split": test_split, **test_metrics, "measured": measured, "run": facts, "decode_failures": failures}
    if cfg.get("expected"):
        results["expected"] = to_plain(cfg.expected)  # the paper's numbers this recipe reproduces
    if "val" in module.eval_results:
        results["val_last_epoch"] = {k: module.eval_results["val"][k] for k in ("t2v", "v2t")}
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
