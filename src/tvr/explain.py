"""Which words match which frames: a heat-map of a token-level head's word x frame interaction for one
caption and one video, the sampled frames as thumbnails along one axis and the caption's tokens along the
other (``tools/explain.py``). A head offers it through :meth:`RetrievalHead.explain` (HBI: the entity-level
similarity and the Banzhaf estimator's interaction)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tvr.data.clips import ClipReader
from tvr.data.records import VideoRef
from tvr.data.tokenizer import CaptionTokenizer
from tvr.data.transforms import ClipFrameTransform
from tvr.data.video import create_backend
from tvr.errors import UserInputError
from tvr.models.retriever import Retriever
from tvr.search.model import data_settings


@dataclass
class Explanation:
    words: list[str]  # the caption's tokens as the model sees them (SOT .. EOT)
    thumbnails: np.ndarray  # uint8 [F, S, S, 3], the sampled frames (resized and cropped)
    maps: dict[str, np.ndarray]  # title -> [words, frames]
    score: float  # the head's retrieval score of the pair


@torch.no_grad()
def explain_pair(retriever: Retriever, text: str, video: str | Path, backend: str = "decord") -> Explanation:
    """Encode one caption and one video file as the checkpoint's evaluation does (its sampler and caption
    length) and ask the head for its word x frame maps."""
    if not text.strip():
        raise UserInputError("--text: the caption is empty")
    sampler, max_words = data_settings(retriever, {"kind": "checkpoint"})
    tokenizer = CaptionTokenizer(max_words)
    reader = ClipReader(create_backend(backend), sampler, ClipFrameTransform(retriever.backbone.preprocessing))
    ref = VideoRef(video_id=Path(video).stem, path=Path(video))
    resized, count = reader.decode(ref)
    frames, mask = reader.empty()
    frames[:count], mask[:count] = reader.transform.normalize(resized), True
    tokens = tokenizer(text)[None]
    retriever.eval()
    text_repr, video_repr = retriever.encode_texts(tokens), retriever.encode_videos(frames[None], mask[None])
    maps = retriever.head.explain(text_repr, video_repr)
    if not maps:
        raise UserInputError(
            f"head '{retriever.head.name}' has no word x frame interaction to show; token-level heads (hbi; drl with head.interaction=wti or ti) offer one"
        )
    ids = tokenizer.encode(text)
    words = [tokenizer.bpe.decode([token]).strip() or "·" for token in ids]
    words[0], words[-1] = "<sot>", "<eot>"
    score = float(retriever.head.similarity(text_repr, video_repr).reshape(-1)[0])
    return Explanation(
        words,
        resized[:count].permute(0, 2, 3, 1).numpy(),
        {title: value[: len(ids), :count].float().cpu().numpy() for title, value in maps.items()},
        score,
    )


def plot_explanation(explanation: Explanation, out: str | Path, caption: str, video_name: str) -> Path:
    """One panel per map: words down, frames across, each column headed by its frame's thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    words, frames = len(explanation.words), explanation.thumbnails.shape[0]
    panels = len(explanation.maps)
    width = max(6.0, 0.9 * frames + 2.5)
    fig = plt.figure(figsize=(width, panels * (0.32 * words + 1.6) + 1.2))
    grid = fig.add_gridspec(2 * panels, 1, height_ratios=[h for _ in range(panels) for h in (1.0, 0.32 * words + 0.4)])
    for panel, (title, values) in enumerate(explanation.maps.items()):
        strip = fig.add_subplot(grid[2 * panel])
        strip.imshow(np.concatenate(list(explanation.thumbnails), axis=1))
        strip.set_axis_off()
        heat = fig.add_subplot(grid[2 * panel + 1])
        image = heat.imshow(values, aspect="auto", cmap="viridis")
        heat.set_yticks(range(words), explanation.words)
        heat.set_xticks(range(frames), [f"f{index}" for index in range(frames)])
        heat.set_title(title, fontsize=10)
        fig.colorbar(image, ax=heat, fraction=0.025, pad=0.02)
    fig.suptitle(f'"{caption}"  vs  {video_name}   (score {explanation.score:.3f})', fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
