"""``tvr-eval ckpt_path=...``: re-evaluate a checkpoint and print the same table ``tvr-train`` prints.

The model is rebuilt from the configuration stored in the checkpoint (CLIP weights come from the
checkpoint itself, so the original weights file is not needed). Data comes from the checkpoint's data
config unless a ``data=<name>`` group is chosen on the command line; ``split`` picks val or test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from tvr.builders import backbone_kwargs, build_datamodule, build_trainer
from tvr.checkpoint import load_checkpoint_file, load_state_dict_checked
from tvr.config import config_dir, to_plain
from tvr.evaluation.report import markdown_table, write_json
from tvr.lit_module import RetrievalModule

log = logging.getLogger(__name__)
EVAL_ROLES = ("val", "test")


def module_from_checkpoint(checkpoint: dict, evaluation: dict, strict: bool = True, source: str = "checkpoint") -> RetrievalModule:
    saved = checkpoint["hyper_parameters"]
    backbone = backbone_kwargs(saved["backbone"])
    backbone["weights"] = None  # every CLIP weight is in the checkpoint's state_dict
    module = RetrievalModule(
        backbone=backbone, head=saved["head"], loss=saved["loss"], optim=saved["optim"],
        evaluation=evaluation, train=saved["train"], run_config=saved.get("run_config"),
    )
    missing, unexpected = load_state_dict_checked(module, checkpoint["state_dict"], strict=strict, source=source)
    if missing or unexpected:
        log.warning("%s loaded partially: missing %s, unexpected %s", source, missing, unexpected)
    return module


def evaluate(cfg: DictConfig) -> dict:
    if cfg.split not in EVAL_ROLES:
        raise ValueError(f"split must be one of {', '.join(EVAL_ROLES)}, got '{cfg.split}'")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint_file(cfg.ckpt_path)
    saved_config = checkpoint["hyper_parameters"].get("run_config") or {}
    with open_dict(cfg):
        cfg.backbone.image_size = saved_config.get("backbone", {}).get("image_size")
    data_cfg = to_plain(cfg.data) if cfg.get("data") else saved_config.get("data")
    if not data_cfg:
        raise ValueError("the checkpoint has no data config; choose one with data=<name> data.source.root=...")
    data_cfg = dict(data_cfg)
    if cfg.split == "val":
        data_cfg["splits"] = {**data_cfg["splits"], "test": data_cfg["splits"].get("val")}
        if not data_cfg["splits"]["test"]:
            raise ValueError("this data config has no val split")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(data_cfg, cfg.evaluation)
    module = module_from_checkpoint(checkpoint, to_plain(cfg.evaluation), strict=cfg.strict, source=str(cfg.ckpt_path))
    trainer = build_trainer(cfg.trainer, run_dir, logger_cfg=None)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if not trainer.is_global_zero:
        return {}
    results = module.eval_results["test"]
    split_name = datamodule.split_names["test"]
    facts = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "head": module.hparams.head["name"],
        "backbone": module.backbone.model_name,
        "dataset": datamodule.dataset.name,
        "frames": datamodule.eval_sampler.max_frames,
        "sampler": datamodule.eval_sampler.describe()["sampler"],
        "rerank": cfg.evaluation.rerank,
    }
    payload = {"split": split_name, **results, "run": {**facts, "data": datamodule.describe()},
               "decode_failures": {"eval_unreadable_videos": module.decode_failures["test"]}}
    write_json(run_dir / "metrics.json", payload)
    table = markdown_table({split_name: results}, facts)
    (run_dir / "results.md").write_text(table)
    print("\n" + table)
    return payload


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
