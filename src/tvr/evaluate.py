"""``tvr-eval ckpt_path=...``: re-evaluate a checkpoint and print the same table ``tvr-train`` prints.

The checkpoint's own config (data, backbone, head, loss, optim, train, evaluation) is the starting point
and every key of it can be overridden on the command line (see ``conf/eval.yaml``). CLIP weights come from
the checkpoint itself, so the original weights file is not needed. Evaluation reads only the evaluated
split's files and never creates data: no synthetic generation, no frame-cache build.

Without ``ckpt_path`` it evaluates a backbone zero-shot, the baseline row of every paper in the field:
``tvr-eval backbone=vit_b32 backbone.weights=<CLIP file> head=meanpool data=msrvtt data.source.root=...``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from tvr.atomic import write_json
from tvr.builders import bank_needs, build_datamodule, build_trainer
from tvr.checkpoint import load_state_dict_checked, load_tvr_checkpoint
from tvr.config import config_dir, to_plain, upgrade_saved_config, with_checkpoint_config
from tvr.errors import ConfigError, exit_on_user_error
from tvr.evaluation.lightning import EvaluationModule
from tvr.evaluation.options import configured_reranker, evaluation_options
from tvr.evaluation.report import decode_failure_summary, markdown_table, measured_block, over_seeds
from tvr.run_folder import refuse_run_dir_inside_data, refuse_run_records
from tvr.validation import validate_eval_config

log = logging.getLogger(__name__)


def module_from_config(cfg: DictConfig, checkpoint: dict | None, source: str) -> EvaluationModule:
    """The model the (checkpoint's, possibly overridden) config describes, with the checkpoint's weights;
    without a checkpoint, the backbone's own weights (``backbone.weights``) and a freshly initialised head."""
    backbone = to_plain(cfg.backbone)
    if checkpoint is None:
        if not backbone.get("weights"):
            log.warning("zero-shot evaluation with backbone.weights=null: the CLIP weights are random")
        return EvaluationModule(backbone=backbone, head=to_plain(cfg.head), evaluation=to_plain(cfg.evaluation))
    backbone["weights"] = None  # every CLIP weight is in the checkpoint's state_dict
    module = EvaluationModule(backbone=backbone, head=to_plain(cfg.head), evaluation=to_plain(cfg.evaluation))
    missing, unexpected = load_state_dict_checked(module, checkpoint["state_dict"], strict=cfg.strict, source=source)
    if missing or unexpected:
        log.warning("%s loaded partially: missing %s, unexpected %s", source, missing, unexpected)
    if checkpoint.get("converted_missing_keys"):
        log.warning(
            "%s was converted with --allow-partial: %d weights were not in the release and keep their random "
            "initialisation: %s",
            source,
            len(checkpoint["converted_missing_keys"]),
            checkpoint["converted_missing_keys"][:10],
        )
    return module


def evaluation_data_config(data: dict, split_role: str, needs_train_captions: bool = False) -> dict:
    """The data config restricted to what evaluating one split needs: that split alone (its files only;
    plus the training split when a re-ranker's query bank needs its captions), no synthetic generation and no
    frame-cache build; a data root that does not exist is an error."""
    split = data["splits"].get(split_role)
    if not split:
        raise ConfigError(
            f"data.splits.{split_role}", "this data config has no such split", "choose split=test or set it"
        )
    source = dict(data["source"])
    root = source.get("root")
    if root is None or not Path(root).is_dir():
        raise ConfigError(
            "data.source.root",
            f"'{root}' (from the checkpoint's config) does not exist",
            "pass data.source.root=<folder holding the dataset> on the tvr-eval command line",
        )
    if source.get("generate"):
        source["generate"] = False  # evaluation never creates data
    cache = dict(data.get("frame_cache") or {})
    if cache.get("mode") == "build":
        cache["mode"] = "auto"  # use a valid cache if there is one, never build one here
    train = data["splits"].get("train") if needs_train_captions else None
    return {**data, "source": source, "frame_cache": cache, "splits": {"train": train, "val": None, "test": split}}


def checkpoint_selection(checkpoint: dict | None, saved: dict) -> tuple[str | None, str]:
    """Which split chose this checkpoint and by what rule, from ``saved``, the config it was trained with."""
    if checkpoint is None:
        return None, "none: zero-shot (backbone weights, untrained head)"
    if "converted_from" in checkpoint:
        return None, f"released checkpoint converted from {checkpoint['converted_from']}"
    val_split = (saved.get("data") or {}).get("splits", {}).get("val")
    if val_split:
        return val_split, f"best {saved.get('train', {}).get('select_metric')}"
    return None, "last epoch"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_from_checkpoint(section: str, saved: dict, used: dict) -> dict[str, list]:
    """``{"data.key": [trained with, evaluated with]}`` for every key of a config section that differs from
    the checkpoint's (overridden on the command line, or another dataset chosen with ``data=<name>``)."""
    before, after = _flatten(saved), _flatten(used)
    return {
        f"{section}.{key}": [before.get(key), after.get(key)]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def check_same_head(cfg: DictConfig, saved: dict) -> None:
    """A ``head=<name>`` other than the checkpoint's is refused under ``strict``: its weights would not fit."""
    trained_with = (saved.get("head") or {}).get("name")
    if cfg.strict and trained_with is not None and trained_with != cfg.head.name:
        raise ConfigError(
            "head",
            f"{cfg.ckpt_path} was trained with head '{trained_with}', and head={cfg.head.name} replaced it",
            f"leave head= out to evaluate the checkpoint's own head, or add strict=false to load the weights "
            f"that fit head '{cfg.head.name}' (the rest keep their initialisation)",
        )


def evaluate(cfg: DictConfig) -> dict:
    validate_eval_config(cfg)  # every key, split included, before the checkpoint or any data is read
    checkpoint = load_tvr_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    if checkpoint is not None and (cfg.get("data") is None or cfg.get("head") is None):
        raise ConfigError(
            "ckpt_path",
            f"{cfg.ckpt_path} carries no tvr run config",
            "evaluate a checkpoint written by tvr-train or tools/convert_checkpoint.py",
        )
    saved = (
        upgrade_saved_config(checkpoint["hyper_parameters"].get("run_config") or {}) if checkpoint is not None else {}
    )
    check_same_head(cfg, saved)
    reranker = configured_reranker(to_plain(cfg.evaluation))
    needs_bank = bool(bank_needs(reranker))
    data_cfg = evaluation_data_config(to_plain(cfg.data), cfg.split, needs_train_captions=needs_bank)
    changed = {}
    for section in ("data", "backbone", "head") if checkpoint is not None else ():
        changed.update(changed_from_checkpoint(section, saved.get(section) or {}, to_plain(cfg[section])))
    if changed:  # said, not silent: a re-evaluation with other settings is another measurement
        log.warning(
            "evaluating with settings that differ from the checkpoint's (trained with -> now): %s",
            "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items()),
        )
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    module = module_from_config(cfg, checkpoint, source=str(cfg.ckpt_path))
    datamodule = build_datamodule(data_cfg, cfg.evaluation, preprocessing=module.backbone.preprocessing)
    trainer = build_trainer(cfg.trainer, run_dir, logger_cfg=None)
    seeds = evaluation_options(module.eval_cfg).seeds
    runs = []
    for seed in seeds or [None]:  # one evaluation per evaluation seed (heads whose evaluation draws)
        if seed is not None:
            module.eval_cfg = {**module.eval_cfg, "seed": seed}
        trainer.test(module, datamodule=datamodule, verbose=False)
        runs.append(module.eval_results["test"])
    if not trainer.is_global_zero:
        return {}
    results = runs[0]
    if seeds:
        results = {**results, "over_seeds": over_seeds(runs, seeds)}
    split_name = datamodule.split_names["test"]
    selected_on, selection = checkpoint_selection(checkpoint, saved)
    facts = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve())
        if checkpoint is not None
        else f"none (zero-shot, weights {cfg.backbone.weights})",
        "head": module.head.name,
        "backbone": module.backbone.model_name,
        "dataset": datamodule.dataset.name,
        "frames": datamodule.eval_sampler.max_frames,
        "sampler": datamodule.eval_sampler.describe()["sampler"],
    }
    measured = measured_block(
        split_name,
        results,
        datamodule.records["test"].info.get("missing_videos", 0),
        cfg.evaluation.rerank,
        selected_on,
        selection,
    )
    payload = {
        "split": split_name,
        **results,
        "measured": measured,
        "run": {**facts, "changed_from_checkpoint": changed, "data": datamodule.describe()},
        "decode_failures": decode_failure_summary(None, {cfg.split: module.decode_failures["test"]}),
    }
    write_json(run_dir / "metrics.json", payload)
    table = markdown_table({split_name: results}, facts, measured)
    (run_dir / "results.md").write_text(table)
    print("\n" + table)
    return payload


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


def main() -> None:
    """Console entry: merge the checkpoint's config into the composition, then run as Hydra does."""
    refuse_run_records(sys.argv[1:], "tvr-eval")  # before Hydra writes its record there
    refuse_run_dir_inside_data(sys.argv[1:], "eval")
    sys.argv = [sys.argv[0], *with_checkpoint_config(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
