"""The LightningModule: one backbone, one head, one loss; nothing in here knows which head it runs.

Training: encode the local batch, all-gather the head representations (with the configured gradient
rule) so every rank scores the global batch, apply CLIP's clamped ``logit_scale``, add the head's extra
losses. Evaluation: encode every video and every text once, gather them across ranks, drop the
duplicates a DistributedSampler pads with (by item index), score all pairs in tiles through the head,
and compute the metrics.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from tvr.data.datamodule import QUERY_BANK_LOADER, TEXT_LOADER, VIDEO_LOADER
from tvr.errors import NonFiniteLossError
from tvr.evaluation.checks import check_finite_representations
from tvr.evaluation.report import evaluate_scores
from tvr.evaluation.similarity import tiled_similarity
from tvr.models.backbone import CLIPBackbone
from tvr.models.distributed import gather_indexed, gather_no_grad, gather_with_grad, is_distributed
from tvr.models.heads import create_head
from tvr.models.heads.base import Repr, repr_length, slice_repr
from tvr.models.losses import create_loss
from tvr.optim import SCHEDULES, BertAdam, parameter_groups
from tvr.resume import gather_objects

log = logging.getLogger(__name__)


class RetrievalModule(pl.LightningModule):
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
        super().__init__()
        self.save_hyperparameters()
        self.backbone = CLIPBackbone(**backbone)
        head_options = {key: value for key, value in head.items() if key != "name"}
        self.head = create_head(head["name"], embed_dim=self.backbone.embed_dim, **head_options)
        self.head.init_from_backbone(self.backbone)
        if train.get("freeze_layer_num", -1) >= 0:
            self.backbone.freeze_like_clip4clip(train["freeze_layer_num"])
        loss_options = {key: value for key, value in loss.items() if key != "name"}
        self.loss = create_loss(loss["name"], **loss_options)
        self.optim_cfg = optim
        self.eval_cfg = evaluation
        self.gather_grad = train.get("gather_grad", "sum")
        self.max_log_logit_scale = math.log(train.get("max_logit_scale", 100.0))
        self.decode_failures: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.train_replaced_samples = 0  # samples whose video was unreadable (once each, however many retries)
        self.eval_results: dict[str, dict] = {}
        self._eval_outputs: dict[str, list] = {}
        self.select_window = int(train.get("select_window", 1))
        self._recent_val_r1: list[float] = []
        self._loss_terms: dict[str, torch.Tensor] = {}
        self._losses_finite: torch.Tensor | None = None  # over the micro-batches of the optimiser step so far
        self.nonfinite = train.get("nonfinite", "stop")
        self.skipped_nonfinite_steps = 0

    # ------------------------------------------------------------------ encoders
    def encode_texts(self, tokens: torch.Tensor) -> Repr:
        return self.head.encode_text(self.backbone.encode_text(tokens))

    def encode_videos(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> Repr:
        features = self.backbone.encode_frames(frames, frame_mask, with_patches=self.head.needs_patches)
        return self.head.encode_video(features)

    def scaled(self, scores: torch.Tensor) -> torch.Tensor:
        return scores * self.backbone.logit_scale.exp() if self.head.uses_logit_scale else scores

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        text_repr = self.encode_texts(batch["tokens"])
        video_repr = self.encode_videos(batch["frames"], batch["frame_mask"])
        text_repr = {key: gather_with_grad(value, self.gather_grad) for key, value in text_repr.items()}
        video_repr = {key: gather_with_grad(value, self.gather_grad) for key, value in video_repr.items()}
        logits = self.scaled(self.head.similarity(text_repr, video_repr))
        loss = self.loss(logits)
        extras = self.head.extra_losses(text_repr, video_repr, self.backbone.logit_scale)
        total = loss + sum(extras.values()) if extras else loss
        self._record_decode_failures(batch)
        # checked with the gradient norm in configure_gradient_clipping: one device sync per step, not two;
        # under gradient accumulation over every micro-batch of the step (the message shows the last one's terms)
        finite = torch.isfinite(total.detach())
        self._losses_finite = finite if self._losses_finite is None else self._losses_finite & finite
        self._loss_terms = {"contrastive": loss.detach(), **{name: value.detach() for name, value in extras.items()}}
        batch_size = batch["tokens"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        trainer = self._trainer
        if trainer is not None and (self.global_step + 1) % trainer.log_every_n_steps == 0:  # Lightning writes step values only then
            if extras:
                self.log("train/contrastive_loss", loss, batch_size=batch_size)
                for name, value in extras.items():
                    self.log(f"train/{name}", value, batch_size=batch_size)
            self.log("train/logit_scale", self.backbone.logit_scale.exp(), batch_size=batch_size)
            self.log("train/replaced_samples", float(self.train_replaced_samples), reduce_fx="max", batch_size=batch_size)
        return total

    def _record_decode_failures(self, batch: dict) -> None:
        if batch["failed_videos"]:
            self.decode_failures["train"].extend(batch["failed_videos"])
            self.train_replaced_samples += int(batch["replaced"].sum())

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
            checked, name = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val), "gradient_norm"  # as Lightning clips
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
        rates = ", ".join(f"{group.get('name', index)}={group['lr']:.3g}" for index, group in enumerate(optimizer.param_groups))
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.nonfinite == "skip":
            self.skipped_nonfinite_steps += 1
            log.warning("non-finite %s at %s: %s; step skipped (%d so far)", what, where, values, self.skipped_nonfinite_steps)
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
    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        # labels (ground truth, unreadable flags) travel beside the representations, never inside them
        if dataloader_idx == VIDEO_LOADER:
            rep = self.encode_videos(batch["frames"], batch["frame_mask"])
            self._eval_outputs["videos"].append((batch["index"], rep))
            self._eval_outputs["video_labels"].append((batch["index"], {"unreadable": batch["unreadable"]}))
            self._eval_outputs["failed"].extend(batch["failed_videos"])
        elif dataloader_idx == TEXT_LOADER:
            rep = self.encode_texts(batch["tokens"])
            self._eval_outputs["texts"].append((batch["index"], rep))
            self._eval_outputs["text_labels"].append((batch["index"], {"video_index": batch["video_index"]}))
        elif dataloader_idx == QUERY_BANK_LOADER:
            self._eval_outputs["bank"].append((batch["index"], self.encode_texts(batch["tokens"])))

    def _start_eval(self) -> None:
        self._eval_outputs = {"videos": [], "video_labels": [], "texts": [], "text_labels": [], "bank": [], "failed": []}

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._finish_eval("val", log_metrics=False)
            return
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _shared_similarity(self, texts: Repr, videos: Repr, tiles: dict) -> torch.Tensor:
        """The full [Nt, Nv] matrix on every rank; under DDP each rank scores a contiguous share of the
        texts and the shares are gathered, so text-conditioned heads split their cost across ranks."""
        if not is_distributed():
            return tiled_similarity(self.head, texts, videos, **tiles)
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        bounds = torch.linspace(0, repr_length(texts), world + 1).long().tolist()
        share = slice_repr(texts, bounds[rank], bounds[rank + 1])
        rows = tiled_similarity(self.head, share, videos, out_device=self.device, **tiles)
        return gather_no_grad(rows).cpu()

    @staticmethod
    def _gather_lists(items: list[str]) -> list[str]:
        return [item for part in gather_objects(list(items)) for item in part]

    def gather_train_failures(self) -> tuple[int, list[str]]:
        """Training samples replaced on every rank, and the distinct unreadable videos behind them."""
        replaced = sum(self._gather_lists([self.train_replaced_samples]))
        return replaced, sorted(set(self._gather_lists(self.decode_failures["train"])))

    def _item_names(self, stage: str) -> tuple[list[str] | None, list[str] | None]:
        """Readable names of the evaluated texts and videos, for error messages (None without a datamodule)."""
        records = getattr(getattr(self.trainer, "datamodule", None), "records", {}).get(stage)
        if records is None:
            return None, None
        texts = [f"text {text.text_id} of video {text.video_id}" for text in records.texts]
        return texts, [video.video_id for video in records.videos]

    def _finish_eval(self, stage: str, log_metrics: bool = True) -> None:
        outputs = self._eval_outputs
        if not outputs["videos"] or not outputs["texts"]:
            return
        videos = gather_indexed(outputs["videos"])
        texts = gather_indexed(outputs["texts"])
        text_to_video = gather_indexed(outputs["text_labels"])["video_index"].cpu().numpy()
        unreadable = gather_indexed(outputs["video_labels"])["unreadable"].bool().cpu()
        text_names, video_names = self._item_names(stage)
        check_finite_representations(texts, videos, unreadable, text_names, video_names, stage=stage)
        cfg = self.eval_cfg
        tiles = {"text_chunk": cfg.get("text_chunk", 1024), "video_chunk": cfg.get("video_chunk", 1024),
                 "memory_budget_bytes": int(cfg.get("memory_budget_gb", 0.5) * 2**30)}
        cos = self._shared_similarity(texts, videos, tiles)
        bank = None
        if outputs["bank"]:
            bank = self._shared_similarity(gather_indexed(outputs["bank"]), videos, tiles)
        qbnorm = cfg.get("qbnorm", {})
        metrics = evaluate_scores(
            cos, text_to_video, rerank=cfg.get("rerank", "none"), median=cfg.get("median", "mean"),
            dsl_temperature=cfg.get("dsl_temperature", 100.0), qbnorm_bank=bank,
            qbnorm_k=qbnorm.get("k", 1), qbnorm_beta=qbnorm.get("beta", 20.0),
            unreadable_videos=torch.nonzero(unreadable).flatten().numpy(),
        )
        failures = sorted(set(self._gather_lists(outputs["failed"])))
        self.decode_failures[stage] = failures
        metrics["num_texts"], metrics["num_videos"] = int(cos.shape[0]), int(cos.shape[1])
        metrics["unreadable_videos"] = int(unreadable.sum())
        self.eval_results[stage] = metrics
        self._eval_outputs = {}
        if failures:
            log.warning("%s: %d videos could not be decoded; they stay in the gallery and count as misses: %s",
                        stage, len(failures), failures[:10])
        if not log_metrics:
            return
        for direction in ("t2v", "v2t"):
            for name, value in metrics[direction].items():
                self.log(f"{stage}/{direction}_{name}", value, sync_dist=False, rank_zero_only=False)
        if stage == "val" and self.select_window > 1:
            # X-Pool's selection rule: the mean of the last N text-to-video R@1 evaluations
            self._recent_val_r1 = (self._recent_val_r1 + [metrics["t2v"]["R1"]])[-self.select_window:]
            self.log("val/t2v_R1_window", sum(self._recent_val_r1) / len(self._recent_val_r1))
        self.log(f"{stage}/unreadable_videos", float(len(failures)))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank's counters (each saw its own share of the training data) and the selection state,
        # so that a resumed run reports what the uninterrupted one would
        checkpoint["tvr_progress"] = {
            "ranks": gather_objects({"replaced": self.train_replaced_samples, "failed": list(self.decode_failures["train"])}),
            "skipped_nonfinite_steps": self.skipped_nonfinite_steps,
            "recent_val_r1": list(self._recent_val_r1),
            "val_results": self.eval_results.get("val"),
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
            merged = {"replaced": sum(rank["replaced"] for rank in ranks), "failed": [v for rank in ranks for v in rank["failed"]]}
            mine = merged if trainer.global_rank == 0 else {"replaced": 0, "failed": []}
        self.train_replaced_samples, self.decode_failures["train"] = mine["replaced"], list(mine["failed"])
        self.skipped_nonfinite_steps = progress["skipped_nonfinite_steps"]
        self._recent_val_r1 = list(progress["recent_val_r1"])
        if progress["val_results"] is not None:
            self.eval_results["val"] = progress["val_results"]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        cfg = self.optim_cfg
        groups = parameter_groups(
            list(self.named_parameters()),
            {id(param) for _, param in self.head.new_parameters()},
            backbone_lr=cfg["backbone_lr"],
            head_lr=cfg["head_lr"],
            weight_decay=cfg["weight_decay"],
            no_decay_1d=cfg.get("no_decay_1d", True),
            no_decay_names=cfg.get("no_decay_names", ()),
        )
        betas, eps = tuple(cfg.get("betas", (0.9, 0.98))), cfg.get("eps", 1e-6)
        name = cfg.get("name", "adamw")
        if name == "adamw":
            # Lightning's AMP plugin clips gradients itself and refuses fused optimisers: fuse only in fp32.
            fused = bool(cfg.get("fused")) and "mixed" not in str(self.trainer.precision)
            optimizer = AdamW(groups, betas=betas, eps=eps, fused=fused or None)
        elif name == "bertadam":
            optimizer = BertAdam(groups, betas=betas, eps=eps, max_grad_norm=cfg.get("max_grad_norm", 1.0))
        else:
            raise ValueError(f"unknown optimiser '{name}'; valid choices: adamw, bertadam")
        total = int(self.trainer.estimated_stepping_batches)
        if cfg.get("t_total_epochs"):  # GLSCL's reference sizes its schedule for 5 epochs whatever the run length
            total = int(total / max(1, self.trainer.max_epochs) * cfg["t_total_epochs"])
        schedule = cfg.get("schedule", "warmup_cosine")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{schedule}'; valid choices: {', '.join(SCHEDULES)}")
        scheduler = LambdaLR(optimizer, SCHEDULES[schedule](cfg.get("warmup_proportion", 0.1), total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
