"""Reading CLIP weights from local files, in every layout researchers actually have on disk.

Supported sources (never a network download):
  * an open_clip checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``, optionally wrapped in
    ``{"state_dict": ...}`` and/or prefixed with ``module.``), loaded with ``weights_only=True``;
  * a Hugging Face folder: either a cache root ``models--org--name`` (its newest snapshot is used), a
    snapshot folder, or any folder holding ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin``
    (open_clip layout) or ``model.safetensors``/``pytorch_model.bin`` (``transformers`` CLIPModel layout,
    converted to open_clip names here);
  * OpenAI's TorchScript archive (``ViT-B-32.pt`` from the CLIP repo). A TorchScript archive is not a
    pickle of tensors, so ``torch.load(weights_only=True)`` cannot read it; it is opened with
    ``torch.jit.load`` instead, which restores tensors and compiled graph code but never runs pickled
    Python. OpenAI's models were trained with QuickGELU, so these weights force QuickGELU on.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tvr.errors import CheckpointError

OPEN_CLIP_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")
SUPPORTED_HINT = (
    "pass backbone.weights=<path> pointing to an open_clip checkpoint (.pt/.bin/.safetensors), "
    "a Hugging Face folder (models--org--name or a snapshot holding open_clip_model.safetensors or "
    "model.safetensors), or OpenAI's TorchScript ViT-B-32.pt; or backbone.weights=null for random init"
)
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Where the papers' released checkpoints (CLIP4Clip, GLSCL, X-Pool) keep CLIP's weights; the key mapping
# (tvr.models.convert) and the checkpoint reader, which recognises such a file, both read it here.
CLIP_PREFIX = "clip."


class WeightsError(CheckpointError):
    """A weights file that is missing, unreadable or does not fit the requested architecture."""


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    source: str  # "open_clip", "transformers" or "openai_torchscript"
    path: Path
    requires_quick_gelu: bool


def read_clip_weights(path: str | Path) -> LoadedWeights:
    """Read a CLIP state_dict in open_clip naming from any supported local source."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"CLIP weights not found at '{path}'; {SUPPORTED_HINT}")
    if path.is_dir():
        return _read_folder(path)
    if is_torchscript_archive(path):
        return _read_openai_torchscript(path)
    state_dict = read_state_dict_file(path)
    if is_transformers_layout(state_dict):
        return LoadedWeights(transformers_to_open_clip(state_dict), "transformers", path, False)
    return LoadedWeights(to_float32(state_dict), "open_clip", path, False)


def _read_folder(folder: Path) -> LoadedWeights:
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise WeightsError(f"Hugging Face cache folder '{folder}' has no snapshot; {SUPPORTED_HINT}")
        folder = candidates[-1]
    for name in OPEN_CLIP_FILES:
        if (folder / name).is_file():
            state_dict = read_state_dict_file(folder / name)
            return LoadedWeights(to_float32(state_dict), "open_clip", folder / name, False)
    for name in TRANSFORMERS_FILES:
        if (folder / name).is_file():
            state_dict = transformers_to_open_clip(read_state_dict_file(folder / name))
            return LoadedWeights(state_dict, "transformers", folder / name, _hf_uses_quick_gelu(folder))
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise WeightsError(
        f"no CLIP weights file in folder '{folder}' (it holds: {present}); expected one of "
        f"{', '.join(OPEN_CLIP_FILES + TRANSFORMERS_FILES)}; {SUPPORTED_HINT}"
    )


def _hf_uses_quick_gelu(folder: Path) -> bool:
    config_file = folder / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text())
    acts = {config.get("text_config", {}).get("hidden_act"), config.get("vision_config", {}).get("hidden_act")}
    return "quick_gelu" in acts


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") for name in names) or any("/code/" in name for name in names)


def _read_openai_torchscript(path: Path) -> LoadedWeights:
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript, but OpenAI's files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise WeightsError(f"'{path}' looks like a TorchScript archive but could not be opened: {error}") from error
    state_dict = {key: value for key, value in module.state_dict().items() if key not in _OPENAI_EXTRA_KEYS}
    return LoadedWeights(to_float32(state_dict), "openai_torchscript", path, True)


def read_state_dict_file(path: Path, hint: str = SUPPORTED_HINT) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``weights_only=True`` pickle, unwrapped from a
    ``{"state_dict": ...}`` checkpoint and a DDP ``module.`` prefix; errors end with ``hint``."""
    return _unwrap(load_tensor_file(path, hint), hint)


WEIGHT_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a weights or checkpoint file (None when it is a file): not found, or a
    folder, with the weight files in it (or in its ``checkpoints/``, a run folder) that may have been meant."""
    if path.is_dir():
        inside = sorted(
            found
            for pattern in ("*", "checkpoints/*")
            for found in path.glob(pattern)
            if found.suffix in WEIGHT_FILE_SUFFIXES
        )
        listed = f" (files in it: {', '.join(str(found) for found in inside[:3])})" if inside else ""
        return f"'{path}' is a folder, not a file{listed}"
    return None if path.is_file() else f"'{path}' not found"


def load_tensor_file(
    path: Path, hint: str, error: type[CheckpointError] = WeightsError, map_location: Any = "cpu"
) -> Any:
    """What a ``.safetensors`` file or a ``torch.load(weights_only=True)`` pickle holds. A missing, empty,
    truncated or otherwise unreadable file raises ``error`` naming the file and ending with ``hint``."""
    problem = not_a_file(path)
    if problem:
        raise error(f"{problem}; {hint}")
    if path.stat().st_size == 0:
        raise error(f"'{path}' is empty (0 bytes: an interrupted copy or save?); {hint}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as failure:  # safetensors raises its own exception types
            raise error(
                f"cannot read safetensors file '{path}' (truncated or not safetensors?): {failure}; {hint}"
            ) from failure
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as failure:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError... by how the bytes are broken
        raise error(
            f"cannot read '{path}' with torch.load(weights_only=True): {_load_failure(failure)}; {hint}"
        ) from failure


def _load_failure(failure: Exception) -> str:
    """What torch's (long, multi-paragraph) load error means for the user."""
    text = str(failure)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (
            f"it holds a pickled Python object ({unsupported[1]}), which weights only loading refuses so that "
            "opening a file cannot run code"
        )
    if "Weights only load failed" in text:
        detail = "torch's weights only unpickler cannot parse it"
    else:
        detail = f"{type(failure).__name__}: {text.splitlines()[0].split('. ')[0] if text else 'no details'}"
    return f"it is truncated, damaged or not a torch file ({detail})"


def _unwrap(checkpoint: dict, hint: str) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"expected a state_dict, got {type(checkpoint).__name__}; {hint}")
    state_dict = strip_module_prefix(checkpoint.get("state_dict", checkpoint))
    return {key: value for key, value in state_dict.items() if torch.is_tensor(value)}


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` that DistributedDataParallel puts before every key."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def state_dict_mismatch(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Sorted keys ``given`` lacks, keys it has in excess, and shared keys whose shapes differ."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong_shape = sorted(key for key in expected.keys() & given.keys() if expected[key].shape != given[key].shape)
    return missing, unexpected, wrong_shape


def to_float32(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI and many hub checkpoints store fp16; tvr keeps fp32 master weights and uses autocast."""
    return {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}


def is_transformers_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(("text_model.", "vision_model.")) for key in state_dict)


_TRANSFORMERS_RENAMES = (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.", "ln_final."),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
)
_TRANSFORMERS_BLOCK_RENAMES = (
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)


def transformers_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``transformers`` CLIPModel state_dict (e.g. openai/clip-vit-base-patch32) to open_clip keys.

    The two hold the same weights: q/k/v projections are packed into ``in_proj`` and the projection
    matrices are stored transposed (``nn.Linear`` weight vs. a right-multiplied parameter).
    """
    state_dict = to_float32(state_dict)
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":
            converted["text_projection"] = value.t().contiguous()
            continue
        if key == "visual_projection.weight":
            converted["visual.proj"] = value.t().contiguous()
            continue
        if key == "logit_scale":
            converted[key] = value
            continue
        new_key = key
        for old, new in _TRANSFORMERS_RENAMES:
            if new_key.startswith(old):
                new_key = new + new_key[len(old) :]
                break
        else:
            raise WeightsError(f"unexpected key '{key}' in a transformers CLIP checkpoint")
        for part in ("q_proj", "k_proj", "v_proj"):
            marker = f".self_attn.{part}."
            if marker in new_key:
                block, kind = new_key.split(marker)
                qkv.setdefault(f"{block}.attn.in_proj_{kind}", {})[part] = value
                break
        else:
            for old, new in _TRANSFORMERS_BLOCK_RENAMES:
                new_key = new_key.replace(old, new)
            converted[new_key] = value
    for key, parts in qkv.items():
        converted[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return converted
