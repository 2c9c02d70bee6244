"""The LightningModule: a Retriever (backbone + head) plus loss and optimisation; nothing in here knows
which head it runs.

Training: encode the local batch, all-gather the head representations (with the configured gradient
rule) so every rank scores the global batch, apply CLIP's clamped ``logit_scale``, add the head's extra
losses. Validation and testing come from :class:`~tvr.evaluation.lightning.EvaluationModule`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.lr_scheduler import LambdaLR

from tvr.distributed import gather_objects, gather_with_grad
from tvr.errors import NonFiniteLossError
from tvr.evaluation.engine import gather_lists
from tvr.evaluation.lightning import EvaluationModule
from tvr.models.heads.base import LossContext, Repr, RetrievalHead, ScoreLevels
from tvr.models.losses import create_loss
from tvr.models.retriever import scaled_scores
from tvr.optim import OPTIMISERS, SCHEDULES, OptimOptions, parameter_groups
from tvr.options import from_config
from tvr.train_options import WINDOW_METRIC, TrainOptions

log = logging.getLogger(__name__)


def training_objective(
    head: RetrievalHead,
    loss: Callable[[torch.Tensor], torch.Tensor],
    logit_scale: torch.Tensor,
    text_repr: Repr,
    video_repr: Repr,
    local_video_ids: torch.Tensor | None = None,
    local_token_ids: torch.Tensor | None = None,
    backbone=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of a (gathered) batch's representations: the configured contrastive ``loss`` on the
    head's scores times ``exp(logit_scale)`` (when the head uses it), on each trained level for a multi-level
    head, plus the head's extra losses. Returns the total, the contrastive part and the named terms."""
    scores = head.similarity(text_repr, video_repr)

    def scaled(values: torch.Tensor) -> torch.Tensor:
        return scaled_scores(head, values, logit_scale)

    levels = scores.levels if isinstance(scores, ScoreLevels) else {}
    if levels:  # a multi-level head: the configured loss on each level it trains
        contrastive = {
            f"contrastive_{name}": loss(scaled(trained))
            for name, trained in scores.trained(head.trained_levels).items()
        }
        total = sum(contrastive.values()) if contrastive else scores.final.new_zeros(())
    else:
        contrastive, total = {}, loss(scaled(scores))
    head_terms = head.extra_losses(
        text_repr, video_repr, LossContext(logit_scale, loss, levels, local_video_ids, local_token_ids, backbone)
    )
    contrastive_total = total
    if head_terms:
        total = total + sum(head_terms.values())
    return total, contrastive_total, {**contrastive, **head_terms}  # the terms are logged by name


class RetrievalModule(EvaluationModule):
    def __init__(
        self,
        backbone: dict,
        head: dict,
        loss: dict,
        optim: dict,
        evaluation: dict,
        train: dict,
        run_config: dict | None = None,
    ) -> None:
        super().__init__(backbone, head, evaluation)
        self.save_hyperparameters()
        options = from_config(TrainOptions, train)
        self.freeze_for_training(options.freeze_layer_num, options.freeze_patch_embedding)
        if options.clip_param_dtype == "fp16":  # the reference family's storage; BertAdam then updates in fp16
            fp16 = self.backbone.store_in_fp16()
            log.info("train.clip_param_dtype=fp16: %d CLIP parameter tensors stored and updated in fp16", len(fp16))
        if options.compile:  # in place: parameter names, and so checkpoints, stay as they are
            for tower in self.head.towers().values():
                tower.compile()
        loss_options = {key: value for key, value in loss.items() if key != "name"}
        self.loss = create_loss(loss["name"], **loss_options)
        self.optim_options = from_config(OptimOptions, optim)
        self.gather_grad = options.gather_grad
        self.max_log_logit_scale = math.log(options.max_logit_scale)
        self.train_replaced_samples = 0  # samples whose video was unreadable (once each, however many retries)
        self.train_short_videos: set[int] = set()  # training videos met with fewer distinct frames than a clip holds
        self.select_window = options.select_window
        self._recent_val_r1: list[float] = []
        self._loss_terms: dict[str, torch.Tensor] = {}
        self._losses_finite: torch.Tensor | None = None  # over the micro-batches of the optimiser step so far
        self.nonfinite = options.nonfinite
        self.skipped_nonfinite_steps = 0
        # wall time: this part of the run counts from part_started (tvr-train sets its own start), and a resumed
        # run adds what its earlier parts had spent up to the checkpoint it continues
        self.part_started = time.perf_counter()
        self.earlier_wall_time_s = 0.0

    def wall_time_s(self) -> float:
        """Seconds the run has taken so far, over every part of a resumed run."""
        return self.earlier_wall_time_s + time.perf_counter() - self.part_started

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        text_repr = self.encode_texts(batch["tokens"])
        video_repr = self.encode_videos(batch["frames"], batch["frame_mask"])
        text_repr = {key: gather_with_grad(value, self.gather_grad) for key, value in text_repr.items()}
        video_repr = {key: gather_with_grad(value, self.gather_grad) for key, value in video_repr.items()}
        total, loss, extras = training_objective(
            self.head,
            self.loss,
            self.backbone.logit_scale,
            text_repr,
            video_repr,
            batch.get("video_index"),
            batch["tokens"],
            self.backbone,
        )
        self._record_decode_failures(batch)
        # checked with the gradient norm in configure_gradient_clipping: one device sync per step, not two;
        # under gradient accumulation over every micro-batch of the step (the message shows the last one's terms)
        finite = torch.isfinite(total.detach())
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite
        self._loss_terms = {"contrastive": loss.detach(), **{name: value.detach() for name, value in extras.items()}}
        batch_size = batch["tokens"].shape[0]
        trainer = self._trainer
        # Lightning writes step values only every log_every_n_steps, so logging on other steps only refreshed
        # the progress bar, at ~0.6 ms a call (3 % of a tiny-CLIP CPU step, tools/bench_train.py)
        if trainer is not None and (self.global_step + 1) % trainer.log_every_n_steps == 0:
            self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
            if extras:
                self.log("train/contrastive_loss", loss, batch_size=batch_size)
                for name, value in extras.items():
                    self.log(f"train/{name}", value, batch_size=batch_size)
            self.log("train/logit_scale", self.backbone.logit_scale.exp(), batch_size=batch_size)
            self.log(
                "train/replaced_samples", float(self.train_replaced_samples), reduce_fx="max", batch_size=batch_size
            )
        return total

    def _record_decode_failures(self, batch: dict) -> None:
        if batch["failed_videos"]:
            self.decode_failures["train"].extend(batch["failed_videos"])
            self.train_replaced_samples += int(batch["replaced"].sum())
        self.train_short_videos.update(batch["short_videos"])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning does, and stop or skip a step whose loss or gradient is not finite. The check
        reuses the norm that clipping by norm computes; gradients are all-reduced first, so every rank
        agrees. Under fp16 (``16-mixed``) the GradScaler skips overflowing gradients itself: only the loss
        is checked there."""
        params = [param for group in optimizer.param_groups for param in group["params"] if param.grad is not None]
        if str(self.trainer.precision) == "16-mixed":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            checked, name = torch.where(self._losses_finite, 0.0, float("nan")), "loss_check"
        elif gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            checked, name = (
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val),
                "gradient_norm",
            )  # as Lightning clips
        else:  # value clipping would hide an inf: take the norm first
            norms = [param.grad.detach().norm() for param in params]
            checked, name = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(()), "gradient_norm"
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        losses_finite, self._losses_finite = self._losses_finite, None  # the next step starts afresh
        if torch.isfinite(checked):
            return
        bad_loss = not bool(losses_finite)
        terms = {**self._loss_terms, name: checked} if bad_loss else {name: checked, **self._loss_terms}
        self._non_finite("loss" if bad_loss else "gradient", terms, self.trainer.fit_loop.epoch_loop.batch_idx)
        for param in params:  # no gradient: AdamW and BertAdam leave the parameter alone
            param.grad = None

    def _non_finite(self, what: str, terms: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Stop the run naming the step, the terms and the learning rates; or (``train.nonfinite=skip``)
        count the step, which the caller then skips."""
        values = ", ".join(f"{name}={float(value.detach()):.6g}" for name, value in terms.items())
        optimizer = self.trainer.optimizers[0]
        rates = ", ".join(
            f"{group.get('name', index)}={group['lr']:.3g}" for index, group in enumerate(optimizer.param_groups)
        )
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.nonfinite == "skip":
            self.skipped_nonfinite_steps += 1
            log.warning(
                "non-finite %s at %s: %s; step skipped (%d so far)", what, where, values, self.skipped_nonfinite_steps
            )
            return
        raise NonFiniteLossError(
            f"non-finite {what} at {where}: {values}; learning rates {rates}. checkpoints/last.ckpt, if written yet, "
            "keeps the last state before it. Lower the learning rates, or set train.nonfinite=skip to skip such steps and count them",
            step=self.global_step,
        )

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # part of the step, so that a checkpoint written at the end of the batch holds the clamped value
        with torch.no_grad():
            self.backbone.logit_scale.clamp_(max=self.max_log_logit_scale)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_end(self) -> None:
        metrics = self.finish_evaluation("val", log_metrics=not self.trainer.sanity_checking)
        if metrics is not None and not self.trainer.sanity_checking and self.select_window > 1:
            # X-Pool's selection rule: the mean of the last N text-to-video R@1 evaluations
            self._recent_val_r1 = (self._recent_val_r1 + [metrics["t2v"]["R1"]])[-self.select_window :]
            self.log(WINDOW_METRIC, sum(self._recent_val_r1) / len(self._recent_val_r1))

    def gather_train_failures(self) -> tuple[int, list[str]]:
        """Training samples replaced on every rank, and the distinct unreadable videos behind them."""
        replaced = sum(gather_lists([self.train_replaced_samples]))
        return replaced, sorted(set(gather_lists(self.decode_failures["train"])))

    def gather_train_short_videos(self) -> int:
        """Distinct training videos that some rank met with fewer distinct frames than a clip holds."""
        return len(set(gather_lists(sorted(self.train_short_videos))))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank's counters (each saw its own share of the training data) and the selection state,
        # so that a resumed run reports what the uninterrupted one would
        checkpoint["tvr_progress"] = {
            "ranks": gather_objects(
                {
                    "replaced": self.train_replaced_samples,
                    "failed": list(self.decode_failures["train"]),
                    "short": sorted(self.train_short_videos),
                }
            ),
            "skipped_nonfinite_steps": self.skipped_nonfinite_steps,
            "recent_val_r1": list(self._recent_val_r1),
            "val_results": self.eval_results.get("val"),
            "wall_time_s": self.wall_time_s(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        progress = checkpoint.get("tvr_progress")
        trainer = self._trainer
        if not progress or trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return  # testing the best checkpoint must not roll the run's counters back to its epoch
        ranks = progress["ranks"]
        if len(ranks) == trainer.world_size:
            mine = ranks[trainer.global_rank]
        else:  # another number of processes: rank 0 carries the totals on
            merged = {
                "replaced": sum(rank["replaced"] for rank in ranks),
                "failed": [v for rank in ranks for v in rank["failed"]],
                "short": [v for rank in ranks for v in rank.get("short", [])],
            }
            mine = merged if trainer.global_rank == 0 else {"replaced": 0, "failed": [], "short": []}
        self.train_replaced_samples, self.decode_failures["train"] = mine["replaced"], list(mine["failed"])
        # checkpoints written before short videos were counted: the resumed run counts from here on
        self.train_short_videos = set(mine.get("short", []))
        self.skipped_nonfinite_steps = progress["skipped_nonfinite_steps"]
        self._recent_val_r1 = list(progress["recent_val_r1"])
        if progress["val_results"] is not None:
            self.eval_results["val"] = progress["val_results"]
        self.earlier_wall_time_s = progress.get("wall_time_s", 0.0)  # checkpoints before 24 do not carry it

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        options = self.optim_options
        groups = parameter_groups(
            list(self.named_parameters()),
            {id(param) for _, param in self.head.new_parameters()},
            backbone_lr=options.backbone_lr,
            head_lr=options.head_lr,
            tower_parameter_ids={id(param) for _, param in self.head.tower_parameters()},
            tower_lr=options.tower_lr,
            weight_decay=options.weight_decay,
            no_decay_1d=options.no_decay_1d,
            no_decay_names=options.no_decay_names,
        )
        optimizer = OPTIMISERS[options.name](groups, options, str(self.trainer.precision))
        total = int(self.trainer.estimated_stepping_batches)
        if options.t_total_epochs:  # GLSCL's reference sizes its schedule for 5 epochs whatever the run length
            total = int(total / max(1, self.trainer.max_epochs) * options.t_total_epochs)
        scheduler = LambdaLR(optimizer, SCHEDULES[options.schedule](options.warmup_proportion, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
