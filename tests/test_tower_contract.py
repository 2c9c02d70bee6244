"""Contract every registered tower must honour, parametrised over the registry (as test_head_contract is
over heads): shapes and the declared outputs, mask handling, gradients to the tower's own parameters, its
settings rebuilding it (identity and weights round trip), and check_fits on a geometry it fits."""

import dataclasses

import pytest
import torch

from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.towers import TOWERS, TowerMismatchError, VisionGeometry, create_tower
from tvr.models.towers.base import ON_REQUEST

B, T = 2, 8
# tvr-tiny-deep: 6 vision blocks, 17 tokens per 32px frame, width 64, embedding 64.
BACKBONE = "tvr-tiny-deep"
# Options that fit that backbone and clips of T frames (a tower absent here must fit them with its defaults),
# some of them not the defaults, so that a setting missing from ``settings()`` shows in the round trip.
TOWER_OPTIONS = {
    "tempme": {"frames": T, "clip_layers": [3, 4, 5], "clip_groups": [2, 2, 2], "tome_r": 1, "lora_rank": 4},
    "lora_text": {"lora_rank": 4},
    "prompt_switch": {"num_prompts": 4, "test_aggregation": "whole_clip"},  # two groups of 4 per clip
}
TOKENS = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0], [49406, 320, 1125, 539, 320, 2368, 49407]])


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPBackbone(BACKBONE)


def build(name: str, backbone, **options):
    torch.manual_seed(1)
    return create_tower(name, backbone=backbone, **{**TOWER_OPTIONS.get(name, {}), **options})


def randomise(tower) -> None:
    """Fresh adapters start as no-ops (LoRA's B = 0, zero temporal embeddings): give every weight a value,
    so each one shows in the outputs and receives a gradient."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in tower.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def clips(backbone, mask=None):
    generator = torch.Generator().manual_seed(3)
    size = backbone.preprocessing.image_size
    frames = torch.randn(B, T, 3, size, size, generator=generator)
    return frames, torch.ones(B, T, dtype=torch.bool) if mask is None else mask


def encode(tower, backbone, with_tokens=False, mask=None, frames=None):
    default_frames, mask = clips(backbone, mask)
    if tower.kind == "text":
        return tower(backbone, TOKENS)
    return tower(backbone, default_frames if frames is None else frames, mask, with_tokens=with_tokens)


def filled(features) -> set[str]:
    return {field.name for field in dataclasses.fields(features) if getattr(features, field.name) is not None}


@pytest.fixture(params=TOWERS.names())
def name(request):
    return request.param


def test_registry_lists_both_kinds():
    kinds = {name: TOWERS.get(name).kind for name in TOWERS.names()}
    assert {"per_frame", "tempme"} <= {n for n, k in kinds.items() if k == "video"}
    assert {"clip_text", "lora_text"} <= {n for n, k in kinds.items() if k == "text"}


def test_shapes_and_declared_outputs(name, backbone):
    """The features have the backbone's shapes, and exactly the declared outputs are filled: the optional
    ones only when asked (``with_tokens``), so a head's ``reads`` can be checked against ``outputs``."""
    tower = build(name, backbone).eval()
    D = backbone.embed_dim
    with torch.no_grad():
        plain = encode(tower, backbone)
        full = encode(tower, backbone, with_tokens=True) if tower.kind == "video" else plain
    if tower.kind == "text":
        assert isinstance(plain, TextFeatures) and filled(plain) == set(tower.outputs)
        assert plain.sentence.shape == (B, D) and plain.tokens.shape == (*TOKENS.shape, D)
        assert torch.equal(plain.mask, TOKENS != 0)
        return
    assert isinstance(full, FrameFeatures)
    assert filled(plain) == tower.outputs - ON_REQUEST and filled(full) == set(tower.outputs)
    assert plain.frames.shape == (B, T, D) and plain.mask.shape == (B, T)
    torch.testing.assert_close(full.frames, plain.frames)  # asking for tokens changes nothing else
    if full.patches is not None:
        assert full.patches.shape[:2] == (B, T) and full.patches.shape[-1] == D
    if full.tokens is not None:
        assert (
            full.tokens.shape[0] == B and full.tokens.shape[-1] == D and full.token_mask.shape == full.tokens.shape[:2]
        )


def test_mask_handling(name, backbone):
    """Video: the mask comes back as given; a tower that takes padded slots ignores what is in them (a
    tower that needs full clips says so, and start-up validation gives it full clips). Text: a caption's
    features do not depend on how much padding follows it."""
    tower = build(name, backbone).eval()
    randomise(tower)
    if tower.kind == "text":
        with torch.no_grad():
            short, long = tower(backbone, TOKENS), tower(backbone, torch.nn.functional.pad(TOKENS, (0, 4)))
        torch.testing.assert_close(long.sentence, short.sentence, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            long.tokens[:, : TOKENS.shape[1]][short.mask], short.tokens[short.mask], atol=1e-5, rtol=0
        )
        return
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    frames, _ = clips(backbone)
    noisy = frames.clone()
    noisy[~mask] = 10 * torch.randn(int((~mask).sum()), *frames.shape[2:])
    with torch.no_grad():
        clean, perturbed = (
            encode(tower, backbone, mask=mask, frames=frames),
            encode(tower, backbone, mask=mask, frames=noisy),
        )
    assert torch.equal(clean.mask, mask)
    if not tower.needs_full_clips:
        torch.testing.assert_close(clean.frames, perturbed.frames)


def test_gradients_reach_every_weight_the_tower_owns(name, backbone):
    tower = build(name, backbone).train()
    randomise(tower)
    features = encode(tower, backbone, with_tokens=True)
    outputs = (
        [features.sentence, features.tokens]
        if tower.kind == "text"
        else [features.frames, features.tokens, features.patches]
    )
    sum(out.square().sum() for out in outputs if out is not None).backward()
    for param_name, param in tower.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_settings_rebuild_the_tower_and_its_weights_round_trip(name, backbone):
    """``settings()`` is what the checkpoint saves to identify the tower: it must rebuild an equal tower,
    the weights must load into it and give the same features, and other settings must be refused."""
    tower = build(name, backbone).eval()
    randomise(tower)
    assert tower.identity() == {"name": name, **tower.settings()}
    rebuilt = create_tower(name, backbone=backbone, **tower.settings()).eval()
    assert rebuilt.identity() == tower.identity()
    rebuilt.load_state_dict(tower.state_dict(), strict=True)
    with torch.no_grad():
        ours, theirs = encode(tower, backbone, with_tokens=True), encode(rebuilt, backbone, with_tokens=True)
    for field in filled(ours):
        torch.testing.assert_close(getattr(theirs, field), getattr(ours, field))
    if tower.settings():  # a tower with settings saves them beside its weights and refuses others
        state = tower.state_dict()
        assert state["_extra_state"] == tower.identity()
        setting = next(iter(tower.settings()))
        state["_extra_state"] = {**tower.identity(), setting: "another"}
        with pytest.raises(
            TowerMismatchError, match=f"trained with {tower.kind} tower '{name}' \\(.*{setting}=another"
        ):
            rebuilt.load_state_dict(state)


def test_check_fits_and_clip_frames_on_a_fitting_geometry(name, backbone):
    cls = TOWERS.get(name)
    options = TOWER_OPTIONS.get(name, {})
    cls.check_options(**options)
    if cls.kind == "video":
        cls.check_fits(VisionGeometry.of_model(backbone.clip.visual), **options)
        assert cls.clip_frames(**options) in (None, T)
    assert cls.check_options(clip_weights="frozen") is None
    with pytest.raises(ValueError, match="clip_weights must be one of trainable, frozen"):
        cls.check_options(clip_weights="half")
