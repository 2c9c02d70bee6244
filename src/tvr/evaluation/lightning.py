"""A Retriever that a Lightning Trainer can validate and test (``tvr-eval``, and the base of the
training module): the Trainer runs the loaders and the processes, :mod:`tvr.evaluation.engine` does the rest."""

from __future__ import annotations

import pytorch_lightning as pl

from tvr.evaluation.engine import EvalCollector, evaluate_encoded, item_names
from tvr.evaluation.options import encodes_every_level, evaluation_options
from tvr.models.retriever import Retriever


class EvaluationModule(Retriever, pl.LightningModule):
    """``backbone`` and ``head`` as for :class:`Retriever`; ``evaluation`` is the ``evaluation`` config
    section (tiles, re-ranking, median rule). After ``trainer.test``, ``eval_results["test"]`` holds the
    metrics and ``decode_failures["test"]`` the ids of the videos that could not be decoded."""

    def __init__(self, backbone: dict, head: dict, evaluation: dict) -> None:
        super().__init__(backbone, head)
        self.eval_cfg = evaluation
        self.head.report_levels = encodes_every_level(evaluation)
        self.decode_failures: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.eval_results: dict[str, dict] = {}
        self._collector: EvalCollector | None = None

    def on_validation_epoch_start(self) -> None:
        self._collector = EvalCollector(evaluation_options(self.eval_cfg).seed)

    def on_test_epoch_start(self) -> None:
        self._collector = EvalCollector(evaluation_options(self.eval_cfg).seed)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collector.add(self, batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collector.add(self, batch)

    def on_validation_epoch_end(self) -> None:
        self.finish_evaluation("val", log_metrics=not self.trainer.sanity_checking)

    def on_test_epoch_end(self) -> None:
        self.finish_evaluation("test")

    def finish_evaluation(self, stage: str, log_metrics: bool = True) -> dict | None:
        """Gather, score and measure the stage's split on every rank; log its metrics unless asked not to."""
        encoded = self._collector.gather() if self._collector is not None else None
        self._collector = None
        if encoded is None:
            return None
        records = getattr(getattr(self.trainer, "datamodule", None), "records", {}).get(stage)
        metrics = evaluate_encoded(self, encoded, self.eval_cfg, stage, item_names(records), self.device)
        self.decode_failures[stage] = encoded.failed
        self.eval_results[stage] = metrics
        if log_metrics:
            for direction in ("t2v", "v2t"):
                for name, value in metrics[direction].items():
                    self.log(f"{stage}/{direction}_{name}", value, sync_dist=False, rank_zero_only=False)
            self.log(f"{stage}/unreadable_videos", float(len(encoded.failed)))
        return metrics
