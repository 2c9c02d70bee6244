"""Explain a text-video score as a picture: the word x frame interaction of a token-level head (HBI: its
entity-level similarity and the Banzhaf estimator's interaction), frames as thumbnails, words as rows.

    python tools/explain.py ckpt_path=outputs/.../checkpoints/best.ckpt --text "a dog runs" --video clip.mp4 --out explain.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvr.errors import exit_on_user_error
from tvr.explain import explain_pair, plot_explanation
from tvr.models.retriever import Retriever


@exit_on_user_error
def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    checkpoints = [arg for arg in argv if arg.startswith("ckpt_path=")]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="the caption")
    parser.add_argument("--video", required=True, type=Path, help="a video file")
    parser.add_argument(
        "--out", type=Path, default=Path("explain.png"), help="where the PNG goes (default explain.png)"
    )
    parser.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    args = parser.parse_args([arg for arg in argv if not arg.startswith("ckpt_path=")])
    if len(checkpoints) != 1:
        parser.error("pass exactly one ckpt_path=<run dir>/checkpoints/best.ckpt")
    if not args.video.is_file():
        parser.error(f"--video {args.video}: file not found")
    retriever = Retriever.from_checkpoint(checkpoints[0].split("=", 1)[1])
    explanation = explain_pair(retriever, args.text, args.video, args.backend)
    out = plot_explanation(explanation, args.out, args.text, args.video.name)
    print(
        f"wrote {out} ({len(explanation.words)} tokens x {explanation.thumbnails.shape[0]} frames, score {explanation.score:.3f})"
    )
    return out


if __name__ == "__main__":
    main()
