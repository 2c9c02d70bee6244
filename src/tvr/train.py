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
from tvr.evaluation.report import markdown_table, write_json

log = logging.getLogger(__name__)


def run_facts(cfg: DictConfig, module, datamodule, trainer: pl.Trainer) -> dict:
    data = datamodule.describe()
    global_batch = cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    return {
        "tvr_version": __version__,
        "head": cfg.head.name,
        "backbone": module.backbone.model_name,
        "backbone_weights": module.backbone.weights_source,
        "dataset": data.pop("dataset"),
        "seed": cfg.seed,
        "global_batch": global_batch,
        "frames": datamodule.eval_sampler.max_frames,
        "sampler": data["eval_sampler"]["sampler"],
        "rerank": cfg.evaluation.rerank,
        "selection_split": datamodule.split_names.get("val"),
        "loss": cfg.loss.name,
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "gather_grad": cfg.train.gather_grad,
        "data": data,
    }


def summarise_failures(module) -> dict:
    train_events = module.decode_failures["train"]
    return {
        "train_replaced_samples": len(train_events),
        "train_unreadable_videos": sorted(set(train_events)),
        "eval_unreadable_videos": {stage: module.decode_failures[stage] for stage in ("val", "test")},
    }


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.evaluation)
    module = build_module(cfg)
    monitor = cfg.train.select_metric if datamodule.has_val else None
    trainer = build_trainer(cfg.trainer, run_dir, cfg.get("logger"), monitor=monitor, callbacks_cfg=cfg.get("callbacks"))
    trainer.fit(module, datamodule=datamodule)
    module.decode_failures["train"] = module.gather_train_failures()
    best = trainer.checkpoint_callback.best_model_path if monitor else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    if not trainer.is_global_zero:
        return {}
    facts = run_facts(cfg, module, datamodule, trainer)
    facts["selection"] = f"best {monitor}" if monitor else "last epoch"
    facts["checkpoint"] = best or str(run_dir / "checkpoints" / "last.ckpt")
    facts["wall_time_s"] = round(time.perf_counter() - started, 1)
    results = {"split": datamodule.split_names["test"], **module.eval_results["test"], "run": facts,
               "decode_failures": summarise_failures(module)}
    if cfg.get("expected"):
        results["expected"] = to_plain(cfg.expected)  # the paper's numbers this recipe reproduces
    if "val" in module.eval_results:
        results["val_last_epoch"] = {k: module.eval_results["val"][k] for k in ("t2v", "v2t")}
    write_json(run_dir / "metrics.json", results)
    table = markdown_table(
        {f"{results['split']}": module.eval_results["test"]},
        {k: facts[k] for k in ("head", "backbone", "dataset", "frames", "sampler", "global_batch", "seed", "selection", "rerank")},
    )
    (run_dir / "results.md").write_text(table)
    print("\n" + table)
    log.info("run folder: %s", run_dir)
    return results


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
