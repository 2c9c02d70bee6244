"""Contract every registered head must honour, parametrised over the registry."""

import dataclasses
import functools
import re

import pytest
import torch

from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.heads import create_head, list_heads
from tvr.models.heads.base import LossContext, ScoreLevels
from tvr.models.losses import create_loss
from tvr.models.similarity import tiled_similarity

# 9 frames: HBI's merges (rates 1/4 then 1/2) leave 2 event-level video tokens, so its event-level weight MLP
# gets a gradient (8 frames or fewer leave one token, whose softmax weight is constantly 1)
D, T, L = 64, 9, 10
HEAD_OPTIONS = {
    "seqtransf": {"layers": 2, "heads": 2, "init_from_clip": False},
    "xpool": {"num_heads": 2},
    "glscl": {
        "temporal_layers": 1,
        "temporal_heads": 2,
        "init_from_clip": False,
        "num_queries": 3,
        "decoder_layers": 2,
        "decoder_heads": 2,
        "decoder_ffn": 32,
    },
    "hbi": {"temporal_layers": 1, "temporal_heads": 2, "init_from_clip": False, "merge_heads": 2, "banzhaf_planes": 8},
    # max_words / max_frames: its ISA matrices are sized by them; the deterministic top-k at evaluation, so
    # that scores are a function of the inputs (its seeded draws are tested in test_ucofia.py)
    "ucofia": {
        "max_words": L,
        "max_frames": T,
        "temporal_layers": 1,
        "temporal_heads": 2,
        "init_from_clip": False,
        "topk": 2,
        "topk_samples": 8,
        "topk_noise": "none",
    },
    "prompt_switch": {"caption_heads": 2, "caption_ffn": 32},
    "hbi_estimator": {
        "temporal_layers": 1,
        "temporal_heads": 2,
        "init_from_clip": False,
        "merge_heads": 2,
        "banzhaf_planes": 8,
        "num_samples": 2,
    },
}
# Parameters whose gradient is zero by construction: HBI's token weights and cluster merge weights are
# softmaxes, which ignore a shift of all their logits (so the output biases get none).
ZERO_BY_CONSTRUCTION = (
    r"blocks\.(text|video)_weights\.\d\.2\.bias",
    r"blocks\.(text|video)_merges\.\d\.ctm\.score\.bias",
)
# HBI's estimator stage learns from detached similarity maps of frozen features: no gradient reaches them.
FROZEN_FEATURES = {"hbi_estimator"}
# GLSCL reproduces its reference, whose decoder attends to padded frames (its GIM softmax sees them too,
# but only rescales the pooled vector, which the cosine undoes); so does UCoFiA (spec Q5, mask_padding=false).
PADDING_SENSITIVE = {"glscl", "ucofia"}
PATCHES = 4  # per frame, for heads that read patch tokens


# [4, L] captions (SOT .. EOT, 0-padded) of the paired batch, embedded by a tiny CLIP of the heads' width
CAPTIONS = torch.tensor(
    [[49406, 320, 1125, 49407] + [0] * (L - 4)] * 2 + [[49406, *range(400, 400 + L - 2), 49407]] * 2
)


@functools.cache
def text_backbone() -> CLIPBackbone:
    torch.manual_seed(0)
    backbone = CLIPBackbone("tvr-tiny")
    assert backbone.embed_dim == D
    return backbone


def make_head(name: str):
    torch.manual_seed(0)
    head = create_head(name, embed_dim=D, **HEAD_OPTIONS.get(name, {}))
    if hasattr(head, "bind_logit_scale"):  # a head scoring with CLIP's logit scale (UCoFiA): a Retriever binds it
        head.bind_logit_scale(torch.nn.Parameter(torch.tensor(2.0)))
    return head


def make_inputs(num_texts: int = 5, num_videos: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    text = TextFeatures(
        torch.randn(num_texts, D, generator=generator),
        torch.randn(num_texts, L, D, generator=generator),
        torch.ones(num_texts, L, dtype=torch.bool),
    )
    mask = torch.ones(num_videos, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    frames = torch.randn(num_videos, T, D, generator=generator) * mask[..., None]
    patches = torch.randn(num_videos, T, PATCHES, D, generator=generator) * mask[..., None, None]
    return text, FrameFeatures(frames, mask, patches=patches)


def score(head, text, video):
    return head.similarity(head.encode_text(text), head.encode_video(video))


@pytest.fixture(params=list_heads())
def head(request):
    return make_head(request.param).eval()


def test_registry_lists_builtin_heads():
    assert {"meanpool", "seqtransf", "xpool", "glscl", "tempme"} <= set(list_heads())


def test_shapes_and_gradients(head):
    """Scores ``[Nt, Nv]``; in training, what the module optimises (the contrastive loss on the final scores,
    or on each trained level of a multi-level head, plus the head's extra losses on a paired batch) reaches
    the text features, the frames and every trainable parameter of the head."""
    head.train()
    text, video = make_inputs(num_texts=4, num_videos=4)
    for tensor in (text.sentence, text.tokens, video.frames):
        tensor.requires_grad_(True)
    out = head.similarity(head_text := head.encode_text(text), head_video := head.encode_video(video))
    levels = out.trained(head.trained_levels) if isinstance(out, ScoreLevels) else {"final": out}
    final = out.final if isinstance(out, ScoreLevels) else out
    assert final.shape == (4, 4) and torch.isfinite(final).all()
    loss = create_loss("infonce")
    # the caption ids and the backbone, for heads whose extra losses read them (Prompt Switch's captioner)
    context = LossContext(
        torch.tensor(2.0),
        loss,
        out.levels if isinstance(out, ScoreLevels) else {},
        local_token_ids=CAPTIONS,
        backbone=text_backbone(),
    )
    objective = sum(loss(10 * level) for level in levels.values()) + sum(
        head.extra_losses(head_text, head_video, context).values()
    )
    objective.backward()
    if head.name not in FROZEN_FEATURES:
        assert text.sentence.grad is not None or text.tokens.grad is not None
        assert video.frames.grad.abs().sum() > 0
    for name, param in head.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert param.grad.abs().sum() > 0 or any(re.fullmatch(pattern, name) for pattern in ZERO_BY_CONSTRUCTION), (
                name
            )


def test_padded_frames_are_ignored(head):
    text, video = make_inputs()
    noisy = video.frames.clone()
    noisy[~video.mask] = 100.0 * torch.randn(int((~video.mask).sum()), D)
    clean, perturbed = score(head, text, video), score(head, text, dataclasses.replace(video, frames=noisy))
    if head.name in PADDING_SENSITIVE:
        assert not torch.allclose(clean, perturbed)  # reference behaviour, documented on the head
        assert torch.equal(clean[:, [0, 2]], perturbed[:, [0, 2]])  # unpadded videos are untouched
    else:
        torch.testing.assert_close(clean, perturbed)


def test_fully_padded_video_scores_finite(head):
    text, video = make_inputs()
    video.mask[2] = False
    video.frames[2] = 0.0
    sims = score(head, text, video)
    assert torch.isfinite(sims).all()


def test_video_permutation_permutes_columns(head):
    text, video = make_inputs()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = FrameFeatures(video.frames[perm], video.mask[perm], patches=video.patches[perm])
    torch.testing.assert_close(score(head, text, permuted), score(head, text, video)[:, perm])


def test_chunked_similarity_equals_unchunked(head):
    text, video = make_inputs(num_texts=7, num_videos=5)
    text_repr, video_repr = head.encode_text(text), head.encode_video(video)
    full = head.similarity(text_repr, video_repr)
    tiled = tiled_similarity(head, text_repr, video_repr, text_chunk=3, video_chunk=2)
    torch.testing.assert_close(tiled, full)


def test_state_dict_round_trip(head):
    text, video = make_inputs()
    clone = make_head(head.name)
    with torch.no_grad():
        for param in clone.parameters():
            param.add_(1.0)
    clone.load_state_dict(head.state_dict(), strict=True)
    clone.eval()
    torch.testing.assert_close(score(clone, text, video), score(head, text, video))


def test_meanpool_ignores_frame_order_and_seqtransf_does_not():
    text, video = make_inputs()
    full = torch.ones_like(video.mask)
    frames = torch.randn_like(video.frames)
    forward, backward = FrameFeatures(frames, full), FrameFeatures(frames.flip(1), full)
    meanpool, seqtransf = make_head("meanpool").eval(), make_head("seqtransf").eval()
    torch.testing.assert_close(score(meanpool, text, forward), score(meanpool, text, backward))
    assert not torch.allclose(score(seqtransf, text, forward), score(seqtransf, text, backward), atol=1e-4)


def test_seqtransf_starts_from_the_clip_text_tower():
    from tvr.models.backbone import CLIPBackbone

    backbone = CLIPBackbone("tvr-tiny")
    head = create_head("seqtransf", embed_dim=64, layers=2, heads=2)
    head.init_from_backbone(backbone)
    torch.testing.assert_close(head.temporal.position_embedding.weight, backbone.clip.positional_embedding)
    for block, source in zip(head.temporal.blocks, backbone.clip.transformer.resblocks):
        for (name, value), (_, expected) in zip(block.state_dict().items(), source.state_dict().items()):
            torch.testing.assert_close(value, expected, msg=name)
    assert head.temporal.blocks[0].ln_1.eps == 1e-12  # CLIP4Clip's TF-style LayerNorm, not the copied 1e-5
    with pytest.raises(ValueError, match="init_from_clip=false"):
        create_head("seqtransf", embed_dim=64, layers=4, heads=2).init_from_backbone(backbone)  # tower has 2 blocks
