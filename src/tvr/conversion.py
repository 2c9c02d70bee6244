"""Released reference checkpoints -> tvr checkpoints (the library side of tools/convert_checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

from tvr.atomic import atomic_torch_save
from tvr.builders import build_module
from tvr.checkpoint import load_state_dict_checked
from tvr.config import compose_config
from tvr.models.convert import convert_reference_state_dict, read_reference_checkpoint

# How a user of tools/convert_checkpoint.py loads a partial match (the tool has no ``strict`` option).
ALLOW_PARTIAL_SWITCH = "--allow-partial to tools/convert_checkpoint.py (allow_partial=True from Python)"


def convert_checkpoint(
    source: Path, target: Path, overrides: list[str], allow_partial: bool = False
) -> tuple[list[str], list[str]]:
    """Build the model the overrides describe (e.g. ``experiment=xpool_msrvtt``), load the reference weights
    into it through the key mapping, and write a checkpoint ``tvr-eval`` loads. Returns (missing, unexpected)
    keys; any mismatch raises unless ``allow_partial``."""
    reference = read_reference_checkpoint(source)  # a bad file fails before the model is built
    cfg = compose_config([*overrides, "backbone.weights=null"])
    module = build_module(cfg, starting=False)  # every weight comes from the release
    state_dict = convert_reference_state_dict(cfg.head.name, reference)
    missing, unexpected = load_state_dict_checked(
        module, state_dict, strict=not allow_partial, source=str(source), partial_switch=ALLOW_PARTIAL_SWITCH
    )
    atomic_torch_save(
        # the missing keys are recorded: the file holds them at their initial (random) values, which nothing else shows
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "converted_from": str(Path(source).resolve()),
            "converted_missing_keys": missing,
        },
        target,
    )
    return missing, unexpected
