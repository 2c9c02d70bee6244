"""From a cosine matrix to the reported numbers: plain metrics always, re-ranked metrics labelled and
alongside, never instead; plus the Markdown table and ``metrics.json`` every run writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tvr.evaluation.metrics import retrieval_metrics
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
) -> dict:
    """Metrics of a ``[Nt, Nv]`` cosine matrix; with ``rerank`` != none, a labelled ``reranked`` block too."""
    if rerank not in RERANKERS:
        raise ValueError(f"unknown rerank '{rerank}'; valid choices: {', '.join(RERANKERS)}")
    result = retrieval_metrics(cos, text_to_video, median=median)
    if rerank == "dsl":
        t2v = retrieval_metrics(dual_softmax(cos, dsl_temperature, over="texts"), text_to_video, median=median)["t2v"]
        v2t = retrieval_metrics(dual_softmax(cos, dsl_temperature, over="videos"), text_to_video, median=median)["v2t"]
        result["reranked"] = {"method": "dsl", "temperature": dsl_temperature, "t2v": t2v, "v2t": v2t}
    elif rerank == "qbnorm":
        if qbnorm_bank is None:
            raise ValueError("QB-Norm needs a query bank (training captions scored against the gallery)")
        normalised = qb_norm(cos, qbnorm_bank, k=qbnorm_k, beta=qbnorm_beta)
        t2v = retrieval_metrics(normalised, text_to_video, median=median)["t2v"]
        result["reranked"] = {
            "method": "qbnorm", "k": qbnorm_k, "beta": qbnorm_beta, "bank_size": int(qbnorm_bank.shape[0]),
            "t2v": t2v, "v2t": "not re-ranked (QB-Norm is a text-to-video method)",
        }
    return result


def _row(label: str, direction: str, values: dict) -> str:
    cells = [f"{values[key]:.1f}" for key, _ in METRIC_COLUMNS]
    return f"| {label} | {direction} | " + " | ".join(cells) + " |"


def markdown_table(results: dict[str, dict], facts: dict | None = None) -> str:
    """``results`` maps a split label (e.g. ``test``) to the output of :func:`evaluate_scores`."""
    lines = []
    if facts:
        lines.append(", ".join(f"{key}: {value}" for key, value in facts.items()))
        lines.append("")
    lines.append("| split | direction | " + " | ".join(title for _, title in METRIC_COLUMNS) + " |")
    lines.append("|" + "---|" * (len(METRIC_COLUMNS) + 2))
    for split, metrics in results.items():
        for direction in ("t2v", "v2t"):
            lines.append(_row(split, direction, metrics[direction]))
        reranked = metrics.get("reranked")
        if reranked:
            label = f"{split} ({reranked['method'].upper()} re-ranked)"
            for direction in ("t2v", "v2t"):
                if isinstance(reranked[direction], dict):
                    lines.append(_row(label, direction, reranked[direction]))
    return "\n".join(lines) + "\n"


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    tmp.replace(path)
