"""The shared CLIP backbone: an open_clip model with the two encoders retrieval heads need.

Built by open_clip name (``ViT-B-32``, ``ViT-B-16``, ``ViT-B-32-quickgelu``, ...) or by an inline
architecture (``tvr-tiny`` is registered here for tests and the synthetic default). The model is
constructed directly from its config, never through ``open_clip.create_model``, so nothing can trigger a
download; weights come only from a local file (see :mod:`tvr.models.weights`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPVisionCfg
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from open_clip.transformer import LayerNormFp32
from torch import nn

from tvr.data.transforms import Preprocessing
from tvr.models.draws import EvaluationDraws
from tvr.models.weights import LoadedWeights, WeightsError, read_clip_weights, state_dict_mismatch

log = logging.getLogger(__name__)

# Inline architectures in open_clip's config format. ``tvr-tiny`` trains from scratch on 2 CPU cores in
# minutes, which is what the synthetic default run and the test-suite need.
INLINE_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tvr-tiny": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    # tvr-tiny with a 6-block ViT: deep enough for a token-merging schedule (TempMe's image-merging blocks,
    # then clip-merging blocks), still trained from scratch on CPU in minutes.
    "tvr-tiny-deep": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 6, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}

# What padded frame slots hold: "zeros", or "encoded_blank", the CLIP features of the all-zero input image
# that the data pipeline puts in padded slots (what a reference encoding every slot computes).
PADDED_FRAME_MODES = ("zeros", "encoded_blank")

# The parameters OpenAI's convert_weights casts to fp16 (:meth:`CLIPBackbone.store_in_fp16`): of every Conv/Linear, of nn.MultiheadAttention, and the projections.
_FP16_LAYER_PARAMETERS = {
    nn.Conv1d: ("weight", "bias"),
    nn.Conv2d: ("weight", "bias"),
    nn.Linear: ("weight", "bias"),
    nn.MultiheadAttention: (
        "in_proj_weight",
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "in_proj_bias",
        "bias_k",
        "bias_v",
    ),
}
_FP16_PROJECTIONS = ("text_projection", "proj")

# Every caption is tokenised with CLIP's BPE; an open_clip model whose text tower uses another
# tokenizer (an HF text tower) cannot be driven by tvr's caption pipeline.
CLIP_VOCAB_SIZE = 49408


@dataclass
class TextFeatures:
    """Output of :meth:`CLIPBackbone.encode_text`.

    sentence: ``[B, D]`` projected EOT feature (CLIP's sentence embedding, not normalised).
    tokens:   ``[B, L, D]`` projected per-token features (after ``ln_final``).
    mask:     ``[B, L]`` bool, True on real tokens (SOT .. EOT), False on padding.
    """

    sentence: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass
class FrameFeatures:
    """Output of :meth:`CLIPBackbone.encode_frames`.

    frames:  ``[B, T, D]`` projected CLS feature per frame; at padded frames zeros or the blank image's
             feature (``CLIPBackbone.padded_frames``).
    mask:    ``[B, T]`` bool, True on real frames.
    patches: ``[B, T, P, D]`` projected patch tokens of each frame, when requested from the per-frame tower.
    tokens:  ``[B, N, D]`` projected token set of a tower that does not keep frames apart (TempMe's merged
             tokens), with ``token_mask`` ``[B, N]``, when requested.
    draws:   at evaluation, where a head that draws while encoding takes its random numbers from
             (:class:`~tvr.models.draws.EvaluationDraws`); None in training and search.
    """

    frames: torch.Tensor
    mask: torch.Tensor
    patches: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    draws: EvaluationDraws | None = None


def list_architectures() -> list[str]:
    return sorted(INLINE_ARCHITECTURES) + open_clip.list_models()


def resolve_architecture(model_name: str | None, architecture: dict | None) -> dict[str, Any]:
    if architecture:
        return copy.deepcopy(dict(architecture))
    if model_name in INLINE_ARCHITECTURES:
        return copy.deepcopy(INLINE_ARCHITECTURES[model_name])
    config = open_clip.get_model_config(model_name) if model_name else None
    if config is None:
        raise ValueError(
            f"unknown backbone model_name '{model_name}'; valid choices: {', '.join(list_architectures())} "
            "(or give backbone.architecture as an inline open_clip config)"
        )
    return config


class PretrainedTagError(ValueError):
    """``backbone.pretrained`` is needed, or names no open_clip weights of the model."""


def resolve_preprocessing(
    model_name: str | None, architecture: dict | None = None, pretrained: str | None = None
) -> Preprocessing:
    """How frames become the input of this backbone, from its config alone (start-up validation asks before
    anything is built; :class:`CLIPBackbone` asks the same): the image size its architecture fixes, and
    mean/std and resize rule from open_clip's preprocessing config of the pretrained weights: those tagged
    ``pretrained``, or without a tag the one every pretrained config of the model shares. An architecture
    open_clip ships no weights for (tvr's inline ones) takes open_clip's defaults, OpenAI CLIP's."""
    vision = resolve_architecture(model_name, architecture).get("vision_cfg", {})
    size = vision.get("image_size", CLIPVisionCfg.image_size)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"backbone '{model_name}' takes {size[0]}x{size[1]} px input; tvr feeds square frames")
        size = size[0]
    tags = [] if architecture else open_clip.list_pretrained_tags_by_model(model_name or "")
    if pretrained is not None:
        if not isinstance(pretrained, str) or architecture or not get_pretrained_cfg(model_name or "", pretrained):
            known = (
                f"its tags: {', '.join(tags)}"
                if tags
                else "it has none (an inline architecture or no open_clip weights)"
            )
            raise PretrainedTagError(f"'{pretrained}' is not a pretrained tag of open_clip's '{model_name}'; {known}")
        tags = [pretrained]
    rules: dict[tuple, list[str]] = {}
    for tag in tags:
        rules.setdefault(_resize_and_normalise(get_pretrained_cfg(model_name, tag)), []).append(tag)
    if len(rules) > 1:
        listing = "; ".join(
            f"{', '.join(named[:3])}{f' and {len(named) - 3} more' if len(named) > 3 else ''}: {dict(rule)}"
            for rule, named in rules.items()
        )
        raise PretrainedTagError(
            f"open_clip's pretrained weights of '{model_name}' are preprocessed differently "
            f"({listing}); say which ones backbone.weights holds with backbone.pretrained=<tag>"
        )
    return Preprocessing(int(size), **dict(next(iter(rules), ())))


def _resize_and_normalise(pretrained_cfg: dict) -> tuple:
    """The fields of an open_clip pretrained config that :class:`Preprocessing` takes, over open_clip's defaults
    (hashable, to compare the configs of a model's tags)."""
    merged = merge_preprocess_dict(PreprocessCfg(), pretrained_cfg)
    return tuple(
        (name, tuple(value) if isinstance(value, (list, tuple)) else value)
        for name, value in sorted(merged.items())
        if name in ("mean", "std", "interpolation", "resize_mode")
    )


class CLIPBackbone(nn.Module):
    """Wraps an ``open_clip.CLIP`` and exposes retrieval-oriented encoders.

    ``preprocessing`` is the input the model takes (:func:`resolve_preprocessing`); ``pretrained`` names the
    open_clip pretrained tag of ``weights`` (``openai``, ``laion2b_s34b_b79k``, ...), needed only for a model
    whose tags are preprocessed differently (ViT-L-14: mean/std 0.5 for ``laion2b_s32b_b82k``).

    ``logit_scale`` stays CLIP's own parameter (init ln(1/0.07) or the checkpoint's value), trained in the
    backbone group and clamped by the training module, as in CLIP4Clip and X-Pool.
    """

    def __init__(
        self,
        model_name: str | None = "tvr-tiny",
        architecture: dict | None = None,
        weights: str | None = None,
        pretrained: str | None = None,
        quick_gelu: bool | None = None,
        grad_checkpointing: bool = False,
        text_padding_mask: bool = True,
        padded_frames: str = "zeros",
    ) -> None:
        super().__init__()
        if padded_frames not in PADDED_FRAME_MODES:
            raise ValueError(
                f"unknown backbone padded_frames '{padded_frames}'; valid choices: {', '.join(PADDED_FRAME_MODES)}"
            )
        self.text_padding_mask = text_padding_mask
        self.padded_frames = padded_frames
        config = resolve_architecture(model_name, architecture)
        # the input the weights expect: what the data module, frame cache, search and explain feed the model
        self.preprocessing = resolve_preprocessing(model_name, architecture, pretrained)
        loaded = read_clip_weights(weights) if weights else None
        config["quick_gelu"] = self._decide_quick_gelu(config, quick_gelu, loaded)
        text_cfg = config.get("text_cfg", {})
        if "hf_model_name" in text_cfg or text_cfg.get("vocab_size", CLIP_VOCAB_SIZE) != CLIP_VOCAB_SIZE:
            raise ValueError(
                f"backbone '{model_name}' has a text tower that does not use CLIP's BPE vocabulary; "
                "tvr supports CLIP-style text towers only"
            )
        config.pop("custom_text", None)
        self.model_name = model_name or "inline"
        self.quick_gelu = config["quick_gelu"]
        self.clip_param_dtype = "fp32"
        self.clip = open_clip.CLIP(**config)
        if loaded is not None:
            self._load(loaded)
        self.weights_source = loaded.source if loaded else "random"
        if grad_checkpointing:
            self.clip.set_grad_checkpointing(True)

    @staticmethod
    def _decide_quick_gelu(config: dict, requested: bool | None, loaded: LoadedWeights | None) -> bool:
        from_config = bool(config.get("quick_gelu", False))
        needs = loaded is not None and loaded.requires_quick_gelu
        if requested is False and needs:
            raise WeightsError(
                f"weights '{loaded.path}' ({loaded.source}) were trained with QuickGELU but "
                "backbone.quick_gelu=false was requested; drop the override or use a -quickgelu model name"
            )
        if needs and not from_config:
            log.info("weights %s (%s) need QuickGELU; enabling it", loaded.path, loaded.source)
        return bool(requested) if requested is not None else (from_config or needs)

    def _load(self, loaded: LoadedWeights) -> None:
        expected = self.clip.state_dict()
        missing, unexpected, wrong_shape = state_dict_mismatch(expected, loaded.state_dict)
        wrong_shapes = [
            f"{key} {tuple(loaded.state_dict[key].shape)} vs {tuple(expected[key].shape)}" for key in wrong_shape
        ]
        if missing or unexpected or wrong_shapes:
            raise WeightsError(
                f"weights '{loaded.path}' ({loaded.source}) do not fit backbone '{self.model_name}': "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {wrong_shapes[:5]}; "
                "check that backbone.model_name matches the checkpoint"
            )
        self.clip.load_state_dict(loaded.state_dict, strict=True)

    def freeze_like_clip4clip(self, layer_num: int) -> list[str]:
        """CLIP4Clip's ``freeze_layer_num`` rule (methods spec §2.6): keep trainable ``ln_final``,
        ``text_projection``, ``logit_scale``, ``visual.ln_post``, ``visual.proj`` and the residual blocks
        with index >= ``layer_num`` in both towers; freeze everything else. Note that 0, the recipe value,
        still freezes the embeddings, ``visual.conv1`` and ``visual.ln_pre``. Returns the frozen names."""
        always = ("ln_final.", "text_projection", "logit_scale", "visual.ln_post.", "visual.proj")
        frozen = []
        for name, param in self.clip.named_parameters():
            block = re.search(r"resblocks\.(\d+)\.", name)
            keep = name.startswith(always) or (block is not None and int(block.group(1)) >= layer_num)
            if not keep:
                param.requires_grad_(False)
                frozen.append(name)
        return frozen

    def freeze_patch_embedding(self) -> list[str]:
        """Freeze the ViT's patch embedding (``visual.conv1``), as the CLIP modules of the GLSCL, HBI, DiffusionRet
        and TempMe references do. Those modules also set ``token_embedding.requires_grad = False``, but on the
        ``nn.Embedding`` module, where it is a plain attribute that freezes nothing: its weight trains there, so it
        trains here too. Returns the frozen names."""
        for param in self.clip.visual.conv1.parameters():
            param.requires_grad_(False)
        return [f"visual.conv1.{name}" for name, _ in self.clip.visual.conv1.named_parameters()]

    def freeze(self) -> list[str]:
        """Freeze every CLIP weight, ``logit_scale`` included (parameter-efficient towers). Returns the names."""
        for param in self.clip.parameters():
            param.requires_grad_(False)
        return [name for name, _ in self.clip.named_parameters()]

    def store_in_fp16(self) -> list[str]:
        """OpenAI's ``convert_weights``, which the DRL/CLIP4Clip family applies to CLIP on GPU (methods spec
        clip4clip-xpool §2.6, drl-ucofia §1.2 and Q8): the weights and biases of every Conv/Linear, the attention
        in-projections and ``text_projection``/``visual.proj`` become fp16 *parameters*, with no fp32 copy; the
        optimiser then updates them in fp16. LayerNorms, the token/positional/class embeddings and
        ``logit_scale`` stay fp32. As in the reference, activations inside CLIP are then fp16 (embeddings are
        cast to the weights' dtype) and each LayerNorm computes in fp32 and returns fp16 (open_clip's
        ``LayerNormFp32``, the reference's LayerNorm: only the class changes, its parameters stay the same
        objects); :meth:`features_for_head` gives the head fp32 features. Returns the fp16 parameters' names."""
        converted = set()
        for module in self.clip.modules():
            names = next((names for kind, names in _FP16_LAYER_PARAMETERS.items() if isinstance(module, kind)), ())
            for name in (*names, *_FP16_PROJECTIONS):
                tensor = getattr(module, name, None)
                if isinstance(tensor, nn.Parameter):
                    tensor.data = tensor.data.half()
                    converted.add(id(tensor))
            if isinstance(module, nn.LayerNorm):
                module.__class__ = LayerNormFp32
        self.clip_param_dtype = "fp16"
        return [name for name, param in self.clip.named_parameters() if id(param) in converted]

    def features_for_head(self, features: TextFeatures | FrameFeatures) -> TextFeatures | FrameFeatures:
        """CLIP's outputs as heads read them: fp32. Only fp16 storage changes them (the references' ``.float()``
        on CLIP's outputs: their heads run in fp32)."""
        if self.clip_param_dtype == "fp32":
            return features
        floats = {
            field.name: value.float()
            for field in dataclasses.fields(features)
            if isinstance(value := getattr(features, field.name), torch.Tensor) and value.is_floating_point()
        }
        return dataclasses.replace(features, **floats)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def set_logit_scale(self, value: float) -> None:
        with torch.no_grad():
            self.clip.logit_scale.fill_(math.log(value))

    def encode_text(self, token_ids: torch.Tensor) -> TextFeatures:
        """``token_ids`` ``[B, L]`` (SOT .. EOT, 0-padded, L <= context length) -> :class:`TextFeatures`.

        The tower runs on the given length L with a causal mask, so the EOT feature equals the one
        computed on CLIP's 77-token context (CLIP4Clip runs 32 tokens; see the methods spec §1). With
        ``text_padding_mask`` (default) padding tokens are also masked as keys, as the DRL-family code
        does: a padding position then attends to every real token and to no other padding, which only
        changes the features *at* padding positions — what token-level heads (GLSCL) read.
        """
        x = self.embed_text(token_ids)
        bias = self.text_attention_bias(token_ids, x.dtype)  # [B or 1, 1, L, L]
        heads = self.clip.transformer.resblocks[0].attn.num_heads
        mask = bias.expand(token_ids.shape[0], heads, -1, -1).flatten(0, 1) if self.text_padding_mask else bias[0, 0]
        return self.project_text(self.clip.transformer(x, attn_mask=mask), token_ids)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token + positional embeddings ``[B, L, W]``, the input of the first text block."""
        length = token_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"captions of {length} tokens exceed the backbone context of {self.context_length}")
        clip = self.clip
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(token_ids).to(cast_dtype)
        return x + clip.positional_embedding[:length].to(cast_dtype)

    def text_attention_bias(self, token_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias ``[B, 1, L, L]`` (``[1, 1, L, L]`` without ``text_padding_mask``): causal,
        plus padding tokens masked as keys."""
        length = token_ids.shape[1]
        causal = self.clip.attn_mask[:length, :length].to(dtype=dtype, device=token_ids.device)[None, None]
        if not self.text_padding_mask:
            return causal
        key_padding = torch.zeros(token_ids.shape, dtype=dtype, device=token_ids.device)
        key_padding.masked_fill_(token_ids == 0, float("-inf"))
        return causal + key_padding[:, None, None, :]

    def project_text(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> TextFeatures:
        """The last text block's output -> ``ln_final``, projection, and the EOT row as the sentence feature."""
        clip = self.clip
        x = clip.ln_final(hidden)
        tokens = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        eot = token_ids.argmax(dim=-1)
        sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot]
        return TextFeatures(sentence=sentence, tokens=tokens, mask=token_ids != 0)

    def encode_images(
        self, images: torch.Tensor, with_patches: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[N, 3, H, W]`` -> projected CLS ``[N, D]`` and, optionally, projected patch tokens ``[N, P, D]``."""
        visual = self.clip.visual
        x = visual._embeds(images.to(visual.conv1.weight.dtype))
        x = visual.transformer(x)
        pooled, patches = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            if with_patches:
                patches = patches @ visual.proj
        return pooled, (patches if with_patches else None)

    def encode_frames(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, with_patches: bool = False
    ) -> FrameFeatures:
        """``frames`` ``[B, T, 3, H, W]`` -> :class:`FrameFeatures` with ``[B, T, D]`` frame embeddings.

        Only real frames (``mask`` True) go through the vision tower. Padded slots get zeros, or with
        ``padded_frames="encoded_blank"`` the encoding of one all-zero image, computed once per call and
        broadcast: CLIP encodes images independently, so values and gradients are those of encoding every
        padded slot (the data pipeline fills them with zeros), as references that encode all slots do.
        Only heads that read padded frames see the choice: GLSCL's decoder, which attends to them as its
        reference does, and X-Pool on a video with no real frame (tests/test_padded_frames.py).
        """
        batch, num_frames = frames.shape[:2]
        if mask is None:
            mask = torch.ones(batch, num_frames, dtype=torch.bool, device=frames.device)
        mask = mask.bool()
        images = frames[mask]
        # The blank image also runs when no frame is real: the tower cannot take 0 images, and its output
        # gives the shapes and dtype (autocast) the zeros must have, the same as on any other batch.
        with_blank = not mask.all() and (self.padded_frames == "encoded_blank" or images.shape[0] == 0)
        if with_blank:
            images = torch.cat([images, frames.new_zeros(1, *frames.shape[2:])])
        pooled, patches = self.encode_images(images, with_patches=with_patches)
        return FrameFeatures(
            frames=self._place_in_slots(pooled, mask, with_blank),
            mask=mask,
            patches=None if patches is None else self._place_in_slots(patches, mask, with_blank),
        )

    def _place_in_slots(self, encoded: torch.Tensor, mask: torch.Tensor, with_blank: bool) -> torch.Tensor:
        """One row per real frame (then the blank image's, if ``with_blank``) -> ``[B, T, ...]``."""
        real = encoded[:-1] if with_blank else encoded
        slot_shape = (*mask.shape, *encoded.shape[1:])
        if with_blank and self.padded_frames == "encoded_blank":
            out = encoded[-1].expand(slot_shape).clone()
        else:
            out = encoded.new_zeros(slot_shape)
        out[mask] = real
        return out
