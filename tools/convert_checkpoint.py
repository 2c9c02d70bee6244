"""Turn a checkpoint released by CLIP4Clip, X-Pool or GLSCL into a tvr checkpoint that tvr-eval loads.

    python tools/convert_checkpoint.py pytorch_model.bin.4 out.ckpt experiment=clip4clip_meanp_msrvtt
    python tools/convert_checkpoint.py model_best.pth out.ckpt experiment=xpool_msrvtt
    tvr-eval ckpt_path=out.ckpt data.source.root=/datasets/msrvtt

The experiment (plus any Hydra overrides) says which architecture the weights belong to; the reference
keys are mapped with tvr.models.convert (CLIP under ``clip.``, in OpenAI or Hugging Face naming, and the
head's own keys). Missing or unexpected keys are listed and the conversion is refused unless
``--allow-partial`` is given. The output is written atomically and loads with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvr.conversion import convert_checkpoint
from tvr.errors import exit_on_user_error


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the released checkpoint")
    parser.add_argument("target", type=Path, help="where to write the tvr checkpoint")
    parser.add_argument("overrides", nargs="+", help="experiment=<recipe> and any other Hydra overrides")
    parser.add_argument(
        "--allow-partial", action="store_true", help="load the matching keys even if some are missing or unexpected"
    )
    args = parser.parse_args()
    missing, unexpected = convert_checkpoint(args.source, args.target, args.overrides, args.allow_partial)
    if missing or unexpected:
        print(
            f"loaded partially: {len(missing)} missing keys {missing[:10]} (left at their initial, random values), "
            f"{len(unexpected)} unexpected keys {unexpected[:10]} (ignored)"
        )
    print(f"wrote {args.target} (evaluate it with: tvr-eval ckpt_path={args.target})")


if __name__ == "__main__":
    main()
