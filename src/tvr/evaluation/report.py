"""From a cosine matrix to the reported numbers: plain metrics always, re-ranked metrics labelled and
alongside, never instead; plus the Markdown table and ``metrics.json`` every run writes."""

from __future__ import annotations

import json
from pathlib import Path

from typing import Sequence

import numpy as np
import torch

from tvr.evaluation.metrics import check_finite_scores, retrieval_metrics
from tvr.evaluation.rerank import RERANKERS, dual_softmax, qb_norm

METRIC_COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MdR", "MdR"), ("MnR", "MnR"), ("RSum", "RSum"))


def evaluate_scores(
    cos: torch.Tensor,
    text_to_video,
    rerank: str = "none",
    median: str = "mean",
    dsl_temperature: float = 100.0,
    qbnorm_bank: torch.Tensor | None = None,
    qbnorm_k: int = 1,
    qbnorm_beta: float = 20.0,
    unreadable_videos: Sequence[int] = (),
) -> dict:
    """Metrics of a ``[Nt, Nv]`` cosine matrix; with ``rerank`` != none, a labelled ``reranked`` block too.

    ``unreadable_videos`` (columns) keep their place in the gallery but count as misses (see
    :func:`~tvr.evaluation.metrics.retrieval_metrics`); re-ranking normalises over the readable videos only,
    so an empty clip's score cannot shift anyone else's.
    """
    if rerank not in RERANKERS:
        raise ValueError(f"unknown rerank '{rerank}'; valid choices: {', '.join(RERANKERS)}")
    cos = torch.as_tensor(cos)
    readable = torch.ones(cos.shape[1], dtype=torch.bool)
    readable[torch.as_tensor(np.asarray(unreadable_videos, dtype=np.int64))] = False

    def metrics_of(rescored: torch.Tensor) -> dict:
        full = torch.zeros(cos.shape, dtype=rescored.dtype)  # unreadable columns: ignored by the metrics
        full[:, readable] = rescored
        return retrieval_metrics(full, text_to_video, median=median, unreadable_videos=unreadable_videos)

    # first: it refuses non-finite scores before any re-ranking normalises over them
    result = retrieval_metrics(cos, text_to_video, median=median, unreadable_videos=unreadable_videos)
    gallery = cos[:, readable]
    if rerank == "dsl":
        t2v = metrics_of(dual_softmax(gallery, dsl_temperature, over="texts"))["t2v"]
        v2t = metrics_of(dual_softmax(gallery, dsl_temperature, over="videos"))["v2t"]
        result["reranked"] = {"method": "dsl", "temperature": dsl_temperature, "t2v": t2v, "v2t": v2t}
    elif rerank == "qbnorm":
        if qbnorm_bank is None:
            raise ValueError("QB-Norm needs a query bank (training captions scored against the gallery)")
        bank = torch.as_tensor(qbnorm_bank)[:, readable]
        check_finite_scores(bank.double().numpy())
        t2v = metrics_of(qb_norm(gallery, bank, k=qbnorm_k, beta=qbnorm_beta))["t2v"]
        result["reranked"] = {
            "method": "qbnorm", "k": qbnorm_k, "beta": qbnorm_beta, "bank_size": int(qbnorm_bank.shape[0]),
            "t2v": t2v, "v2t": "not re-ranked (QB-Norm is a text-to-video method)",
        }
    return result


def _row(label: str, direction: str, values: dict) -> str:
    cells = [f"{values[key]:.1f}" for key, _ in METRIC_COLUMNS]
    return f"| {label} | {direction} | " + " | ".join(cells) + " |"


def measured_block(split: str, metrics: dict, missing_videos: int, rerank: str, selected_on: str | None, selection: str) -> dict:
    """What an evaluation measured, written beside its numbers in ``metrics.json`` and the table.

    ``selected_on`` is the split that chose the checkpoint (None when unknown, e.g. a converted release).
    """
    return {
        "split": split,
        "texts": metrics["num_texts"],
        "videos": metrics["num_videos"],
        "annotated_videos": metrics["num_videos"] + missing_videos,
        "missing_videos": missing_videos,
        "unreadable_videos": metrics["unreadable_videos"],
        "rerank": rerank,
        "checkpoint_selected_on": selected_on,
        "checkpoint_selection": selection,
        "selected_on_evaluated_split": selected_on == split,
    }


def describe_measurement(measured: dict) -> list[str]:
    """The table's header lines: what was measured, and a warning for anything that is not the protocol."""
    selected = measured["checkpoint_selected_on"]
    lines = [
        f"measured: split '{measured['split']}', {measured['texts']} texts x {measured['videos']} videos "
        f"({measured['missing_videos']} of {measured['annotated_videos']} annotated videos missing from disk, "
        f"{measured['unreadable_videos']} unreadable); re-ranking: {measured['rerank']}; "
        f"checkpoint: {measured['checkpoint_selection']}" + (f" on split '{selected}'" if selected else "")
    ]
    if measured["missing_videos"]:
        lines.append(f"warning: {measured['missing_videos']} of {measured['annotated_videos']} annotated videos are missing "
                     "from disk and were dropped with their captions: not the protocol's full gallery")
    if measured["unreadable_videos"]:
        lines.append(f"warning: {measured['unreadable_videos']} unreadable videos stay in the gallery and count as misses")
    if measured["selected_on_evaluated_split"]:
        lines.append(f"warning: the checkpoint was selected on the evaluated split '{selected}' itself: not a held-out result")
    if measured["rerank"] != "none":
        lines.append(f"note: the re-ranked rows use {measured['rerank'].upper()}, a transductive method that sees all test queries")
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
        for level, level_metrics in metrics.get("levels", {}).items():
            for direction in ("t2v", "v2t"):
                lines.append(_row(f"{split} (level: {level})", direction, level_metrics[direction]))
        reranked = metrics.get("reranked")
        if reranked:
            label = f"{split} ({reranked['method'].upper()} re-ranked)"
            for direction in ("t2v", "v2t"):
                if isinstance(reranked[direction], dict):
                    lines.append(_row(label, direction, reranked[direction]))
    return "\n".join(lines) + "\n"


def decode_failure_summary(train: tuple[int, list[str]] | None, evaluation: dict[str, list[str]]) -> dict:
    """One shape for ``tvr-train`` and ``tvr-eval``: ``train`` is (replaced samples, distinct unreadable
    training videos), None where no training ran; ``evaluation`` maps a role (val, test) to its unreadable ids."""
    return {
        "train_replaced_samples": None if train is None else train[0],
        "train_unreadable_videos": None if train is None else train[1],
        "eval_unreadable_videos": evaluation,
    }


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    tmp.replace(path)
