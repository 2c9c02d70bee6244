"""From a cosine matrix to the reported numbers: plain metrics always, re-ranked metrics labelled and
alongside, never instead; plus the Markdown table and ``metrics.json`` every run writes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tvr.evaluation.metrics import check_finite_scores, retrieval_metrics
from tvr.evaluation.rerank import DIRECTIONS, Reranker, as_levels

METRIC_COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MdR", "MdR"), ("MnR", "MnR"), ("RSum", "RSum"))


def evaluate_scores(
    cos: torch.Tensor,
    text_to_video,
    reranker: Reranker | None = None,
    median: str = "mean",
    query_bank=None,
    unreadable_videos: Sequence[int] = (),
    video_bank=None,
    levels: dict[str, torch.Tensor] | None = None,
    second_stage: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Metrics of a ``[Nt, Nv]`` cosine matrix; with a ``reranker``, a labelled ``reranked`` block too.

    ``second_stage`` ``(t2v [Nt, Nv], v2t [Nv, Nt])`` is a head's learned per-query re-ranking of ``cos``
    (DiffusionRet): text-to-video ranks the first matrix, video-to-text the second. Those are then the
    headline numbers, and the plain matrix's are reported beside them as ``first_stage``; a transductive
    ``reranker`` then re-ranks each direction's own matrix.

    ``query_bank`` ``[Nb, Nv]`` scores the captions the re-ranker asked for against the same gallery (its
    text-to-video bank), ``video_bank`` ``[Nb, Nt]`` the videos it asked for against the texts (its
    video-to-text bank); ``levels`` ``{level: [Nt, Nv]}`` are the head's score levels, which a level-aware
    re-ranker reads instead of ``cos`` (its banks are then ``{level: matrix}`` too).
    ``unreadable_videos`` (columns) keep their place in the gallery but count as misses (see
    :func:`~tvr.evaluation.metrics.retrieval_metrics`); re-ranking normalises over the readable videos only,
    so an empty clip's score cannot shift anyone else's.
    """
    cos = torch.as_tensor(cos)
    readable = torch.ones(cos.shape[1], dtype=torch.bool)
    readable[torch.as_tensor(np.asarray(unreadable_videos, dtype=np.int64))] = False

    def metrics_of(rescored: torch.Tensor) -> dict:
        full = torch.zeros(cos.shape, dtype=rescored.dtype)  # unreadable columns: ignored by the metrics
        full[:, readable] = rescored
        return retrieval_metrics(full, text_to_video, median=median, unreadable_videos=unreadable_videos)

    def readable_columns(scores):
        """The readable videos' columns of a matrix, or of every level of ``{level: matrix}``, checked finite."""
        if scores is None:
            return None
        picked = {name: torch.as_tensor(matrix)[:, readable] for name, matrix in as_levels(scores).items()}
        for matrix in picked.values():
            check_finite_scores(matrix.double().numpy())
        return picked if isinstance(scores, dict) else picked["final"]

    def finite(scores):
        for matrix in as_levels(scores).values() if scores is not None else ():
            check_finite_scores(torch.as_tensor(matrix).double().numpy())
        return scores

    # first: it refuses non-finite scores before any re-ranking normalises over them
    result = retrieval_metrics(cos, text_to_video, median=median, unreadable_videos=unreadable_videos)
    ranked = {direction: cos for direction in DIRECTIONS}  # the [Nt, Nv] matrix each direction ranks
    if second_stage is not None:
        ranked = {"t2v": torch.as_tensor(second_stage[0]), "v2t": torch.as_tensor(second_stage[1]).t()}
        first_stage = result
        result = {
            direction: retrieval_metrics(
                ranked[direction], text_to_video, median=median, unreadable_videos=unreadable_videos
            )[direction]
            for direction in DIRECTIONS
        }
        result["first_stage"] = first_stage
    if reranker is None:
        return result
    if reranker.level_aware and not levels:
        raise ValueError(f"re-ranker '{reranker.name}' reads the score levels of a head that scores at several")
    banks = {"t2v": readable_columns(query_bank), "v2t": finite(video_bank)}
    result["reranked"] = reranker.describe(query_bank)
    for direction in DIRECTIONS:
        gallery = readable_columns(levels) if reranker.level_aware else ranked[direction][:, readable]
        if direction in reranker.directions:
            rescored = reranker.rerank(gallery, direction, banks[direction])
            result["reranked"][direction] = metrics_of(rescored)[direction]
        else:
            result["reranked"][direction] = f"not re-ranked ({reranker.why_not})"
    return result


def over_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """Mean and sample standard deviation of every metric over evaluations that differ only in the evaluation
    seed (``{"seeds", "t2v": {metric: {"mean", "std"}}, "v2t": ..., "reranked": {...}}``), and each run's rows."""

    def spread(blocks: list[dict]) -> dict:
        return {
            key: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
            for key, _ in METRIC_COLUMNS
            for values in [[block[key] for block in blocks]]
        }

    summary = {
        "seeds": list(seeds),
        **{direction: spread([run[direction] for run in runs]) for direction in DIRECTIONS},
    }
    if "reranked" in runs[0]:
        summary["reranked"] = {
            direction: spread([run["reranked"][direction] for run in runs])
            for direction in DIRECTIONS
            if isinstance(runs[0]["reranked"][direction], dict)
        }
    summary["per_seed"] = [{direction: run[direction] for direction in DIRECTIONS} for run in runs]
    return summary


def _spread_row(label: str, direction: str, values: dict) -> str:
    cells = [f"{values[key]['mean']:.1f} ± {values[key]['std']:.1f}" for key, _ in METRIC_COLUMNS]
    return f"| {label} | {direction} | " + " | ".join(cells) + " |"


def _row(label: str, direction: str, values: dict) -> str:
    cells = [f"{values[key]:.1f}" for key, _ in METRIC_COLUMNS]
    return f"| {label} | {direction} | " + " | ".join(cells) + " |"


def measured_block(
    split: str,
    metrics: dict,
    missing_videos: int,
    rerank: str,
    selected_on: str | None,
    selection: str,
    train_short_videos: int | None = None,
) -> dict:
    """What an evaluation measured, written beside its numbers in ``metrics.json`` and the table.

    ``selected_on`` is the split that chose the checkpoint (None when unknown, e.g. a converted release).
    ``train_short_videos``: the distinct training videos with fewer distinct frames than a clip holds (None
    where no training ran); ``metrics["short_videos"]`` counts the evaluated split's.
    """
    return {
        "split": split,
        "texts": metrics["num_texts"],
        "videos": metrics["num_videos"],
        "annotated_videos": metrics["num_videos"] + missing_videos,
        "missing_videos": missing_videos,
        "unreadable_videos": metrics["unreadable_videos"],
        "short_videos": metrics["short_videos"],
        "train_short_videos": train_short_videos,
        "rerank": rerank,
        "second_stage": metrics.get("second_stage"),
        "checkpoint_selected_on": selected_on,
        "checkpoint_selection": selection,
        "selected_on_evaluated_split": selected_on == split,
    }


def second_stage_label(described: dict) -> str:
    """``<method>'s second stage (<kind>: <option> <value>, ...)`` from :meth:`RetrievalHead.describe_rerank`."""
    options = ", ".join(f"{key} {value}" for key, value in described.items() if key not in ("method", "kind"))
    return f"{described['method']}'s second stage ({described['kind']}: {options})"


def describe_measurement(measured: dict) -> list[str]:
    """The table's header lines: what was measured, and a warning for anything that is not the protocol."""
    selected = measured["checkpoint_selected_on"]
    trained = measured["train_short_videos"]
    lines = [
        f"measured: split '{measured['split']}', {measured['texts']} texts x {measured['videos']} videos "
        f"({measured['missing_videos']} of {measured['annotated_videos']} annotated videos missing from disk, "
        f"{measured['unreadable_videos']} unreadable); short videos (fewer distinct frames than a clip holds, "
        f"padded or repeated): {measured['short_videos']} of {measured['videos']}"
        + ("" if trained is None else f", {trained} in training")
        + f"; re-ranking: {measured['rerank']}; "
        f"checkpoint: {measured['checkpoint_selection']}" + (f" on split '{selected}'" if selected else "")
    ]
    second = measured.get("second_stage")  # absent from metrics.json written before it existed
    if second:
        lines.append(
            f"ranked by {second_stage_label(second)}, a matrix per direction; "
            "the first stage alone is reported beside it"
        )
    if measured["missing_videos"]:
        lines.append(
            f"warning: {measured['missing_videos']} of {measured['annotated_videos']} annotated videos are missing "
            "from disk and were dropped with their captions: not the protocol's full gallery"
        )
    if measured["unreadable_videos"]:
        lines.append(
            f"warning: {measured['unreadable_videos']} unreadable videos stay in the gallery and count as misses"
        )
    if measured["selected_on_evaluated_split"]:
        lines.append(
            f"warning: the checkpoint was selected on the evaluated split '{selected}' itself: not a held-out result"
        )
    if measured["rerank"] != "none":
        lines.append(
            f"note: the re-ranked rows use {measured['rerank'].upper()}, a transductive method that sees all test queries"
        )
    return lines


def markdown_table(results: dict[str, dict], facts: dict | None = None, measured: dict | None = None) -> str:
    """``results`` maps a split label (e.g. ``test``) to the output of :func:`evaluate_scores`."""
    lines = []
    if facts:
        lines.append(", ".join(f"{key}: {value}" for key, value in facts.items()))
        lines.append("")
    if measured:
        lines += [line + "  " for line in describe_measurement(measured)]  # Markdown line breaks
        lines.append("")
    lines.append("| split | direction | " + " | ".join(title for _, title in METRIC_COLUMNS) + " |")
    lines.append("|" + "---|" * (len(METRIC_COLUMNS) + 2))
    for split, metrics in results.items():
        for direction in ("t2v", "v2t"):
            lines.append(_row(split, direction, metrics[direction]))
        if "first_stage" in metrics:  # the headline above is the head's second stage; its first stage alone here
            for direction in ("t2v", "v2t"):
                lines.append(_row(f"{split} (first stage alone)", direction, metrics["first_stage"][direction]))
        for level, level_metrics in metrics.get("levels", {}).items():
            for direction in ("t2v", "v2t"):
                lines.append(_row(f"{split} (level: {level})", direction, level_metrics[direction]))
        reranked = metrics.get("reranked")
        if reranked:
            label = f"{split} ({reranked['method'].upper()} re-ranked)"
            for direction in ("t2v", "v2t"):
                if isinstance(reranked[direction], dict):
                    lines.append(_row(label, direction, reranked[direction]))
        seeds = metrics.get("over_seeds")
        if seeds:  # rows above: the first seed's; these: mean ± std over every seed
            label = f"{split} (mean ± std, evaluation seeds {', '.join(map(str, seeds['seeds']))})"
            for direction in ("t2v", "v2t"):
                lines.append(_spread_row(label, direction, seeds[direction]))
            for direction, values in seeds.get("reranked", {}).items():
                lines.append(_spread_row(f"{label} ({reranked['method'].upper()} re-ranked)", direction, values))
    return "\n".join(lines) + "\n"


def decode_failure_summary(train: tuple[int, list[str]] | None, evaluation: dict[str, list[str]]) -> dict:
    """One shape for ``tvr-train`` and ``tvr-eval``: ``train`` is (replaced samples, distinct unreadable
    training videos), None where no training ran; ``evaluation`` maps a role (val, test) to its unreadable ids."""
    return {
        "train_replaced_samples": None if train is None else train[0],
        "train_unreadable_videos": None if train is None else train[1],
        "eval_unreadable_videos": evaluation,
    }
