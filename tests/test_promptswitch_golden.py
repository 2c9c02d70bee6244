"""Prompt Switch: the prompt_switch video tower + head + losses reproduce the original implementation
(bladewaltz1/PromptSwitch, golden fixture) tensor by tensor, from pixels and token ids, through tvr's
reference-key mapping (HF CLIP keys via transformers_to_open_clip, the added keys via the head's mapping).

Every size (widths, depths, prompts, frames, vocabulary, special ids) and tolerance comes from the fixture:
float64 to ``tolerances_hint``'s 1e-10 (1e-8 relative on gradients), float32 within ten times the
reference's own float32-vs-float64 gap for that tensor (``fp32_vs_fp64_max_abs_diff``)."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from conftest import FIXTURES, compose_train
from tvr.checkpoint import load_state_dict_checked
from tvr.data.sampling import create_sampler
from tvr.errors import ConfigError
from tvr.lit_module import training_objective
from tvr.models.convert import convert_reference_state_dict, map_reference_head_keys
from tvr.models.losses import create_loss
from tvr.models.retriever import Retriever
from tvr.models.towers import TowerMismatchError
from tvr.models.towers.base import VisionGeometry
from tvr.models.towers.prompt_switch import PromptSwitchTower, switch_prompts
from tvr.validation import validate_train_config

GOLDEN = torch.load(FIXTURES / "golden" / "promptswitch_golden.pt", weights_only=True)
ABOUT = json.loads((FIXTURES / "golden" / "promptswitch_golden.json").read_text())
CONFIG = GOLDEN["config"]
FP32_GAP = ABOUT["fp32_vs_fp64_max_abs_diff"]
FLOAT64_ATOL, FLOAT64_GRAD_RTOL = 1e-10, 1e-8
# The fixture's tiny HF CLIP as an open_clip architecture; tvr's text towers use CLIP's BPE vocabulary size, so
# the fixture's rows are copied into the first rows of a 49408-row table (the rest are never read).
CLIP_VOCABULARY = 49408
ARCHITECTURE = {
    "embed_dim": CONFIG["projection_dim"],
    "quick_gelu": True,
    "vision_cfg": {
        "image_size": CONFIG["image_size"],
        "patch_size": CONFIG["patch_size"],
        "width": CONFIG["vision_width"],
        "layers": CONFIG["vision_layers"],
        "head_width": CONFIG["vision_width"] // CONFIG["vision_heads"],
        "mlp_ratio": CONFIG["vision_mlp"] / CONFIG["vision_width"],
    },
    "text_cfg": {
        "context_length": CONFIG["context_length"],
        "vocab_size": CLIP_VOCABULARY,
        "width": CONFIG["text_width"],
        "heads": CONFIG["text_heads"],
        "layers": CONFIG["text_layers"],
        "mlp_ratio": CONFIG["text_mlp"] / CONFIG["text_width"],
    },
}
HEAD = {
    "name": "prompt_switch",
    "num_prompts": CONFIG["num_prompts"],
    "caption_loss_mult": CONFIG["caption_loss_mult"],
    "caption_layers": CONFIG["num_captioner_layers"],
    "caption_heads": CONFIG["captioner_heads"],
    "caption_ffn": CONFIG["captioner_ffn"],
    "caption_frequent_weight": CONFIG["frequent_word_weight"],
    "caption_frequent_tokens": GOLDEN["frequent_ids_tiny"].tolist(),
    "vocab_size": CONFIG["vocab_size"],  # the captioner's softmax runs over the fixture's vocabulary
}
ADDED_TOWER_KEYS = ("clip.vision_model.encoder.prompt_embedding", "clip.vision_model.attn.")


def golden_retriever(dtype: torch.dtype = torch.float64, **head_options) -> Retriever:
    retriever = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {**HEAD, **head_options})
    state_dict = convert_reference_state_dict("prompt_switch", GOLDEN["state_dict"])
    vocabulary = state_dict["backbone.clip.token_embedding.weight"]
    table = retriever.state_dict()["backbone.clip.token_embedding.weight"].clone()
    table[: vocabulary.shape[0]] = vocabulary
    state_dict["backbone.clip.token_embedding.weight"] = table
    load_state_dict_checked(retriever, state_dict, strict=True, source="promptswitch_golden.pt")
    return retriever.to(dtype)


def tvr_token_ids(hf_ids: torch.Tensor) -> torch.Tensor:
    """The reference's HF layout (padded with the EOT id) -> open_clip's (padded with 0, EOT = the argmax)."""
    after_eot = (hf_ids == CONFIG["eot_id"]).long().cumsum(dim=1) > 1
    return hf_ids.masked_fill(after_eot, 0)


def fp_tolerance(dtype: torch.dtype, name: str, expected: torch.Tensor | None = None) -> float:
    """float64: 1e-10; float32: ten times the reference's own float32 gap, and never below four float32 steps
    of the largest expected value (a scalar's recorded gap can be below one step: the loss, 12.7, has 8e-8)."""
    if dtype == torch.float64:
        return FLOAT64_ATOL
    resolution = 0.0 if expected is None else 4 * torch.finfo(torch.float32).eps * expected.abs().max().item()
    return max(10 * FP32_GAP[name], resolution)


def close(actual, expected, dtype, name):
    atol = fp_tolerance(dtype, name, expected)
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.fixture(scope="module")
def trained(dtype):
    """One training step's forward and backward, as the reference's trainer runs it."""
    retriever = golden_retriever(dtype).train()
    ids = tvr_token_ids(GOLDEN["train_text_ids"])
    frames = GOLDEN["train_video"].to(dtype)
    trace = retriever.head.video_tower.trace(retriever.backbone, frames)
    text = retriever.encode_texts(ids)
    video = retriever.encode_videos(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    total, contrastive, terms = training_objective(
        retriever.head,
        create_loss("infonce"),
        retriever.backbone.logit_scale,
        text,
        video,
        None,
        ids,
        retriever.backbone,
    )
    logits = retriever.head.caption_logits(video["frames"], ids, retriever.backbone)
    embedding = retriever.backbone.clip.token_embedding.weight
    (embedding_grad,) = torch.autograd.grad(terms["caption"], [embedding], retain_graph=True, allow_unused=True)
    assert embedding_grad is None  # the teacher-forcing lookup runs without gradient (Q5)
    caption_grads = torch.autograd.grad(
        terms["caption"], [retriever.get_parameter(n) for n in tower_keys()], retain_graph=True
    )
    total.backward()
    return retriever, trace, text, video, total, contrastive, terms, logits, dict(zip(tower_keys(), caption_grads))


def tower_keys() -> list[str]:
    return [f"head.{key}" for key in map_reference_head_keys("prompt_switch", GOLDEN["grads_caption_only"])]


def test_every_block_and_the_switched_prompt_rows(trained, dtype):
    _, trace, *_ = trained
    close(trace.encoder_in, GOLDEN["train_encoder_in"], dtype, "train_encoder_in")
    assert len(trace.block_out) == len(GOLDEN["train_block_out"]) == CONFIG["vision_layers"]
    for layer, expected in GOLDEN["train_block_out"].items():
        close(trace.block_out[layer], expected, dtype, f"train_block_out[{layer}]")
        name = f"train_attn_in_prompts[{layer}] (whole attention input)"
        close(trace.attn_in_prompts[layer], GOLDEN["train_attn_in_prompts"][layer], dtype, name)
    close(trace.cls_last, GOLDEN["train_cls_last"], dtype, "train_cls_last")
    close(trace.agg_attn, GOLDEN["train_agg_attn"], dtype, "train_agg_attn")
    close(trace.post_ln, GOLDEN["train_post_ln"], dtype, "train_post_ln")
    close(trace.frames, GOLDEN["train_frame_embeds"], dtype, "train_frame_embeds")


def test_embeddings_similarities_and_losses(trained, dtype):
    retriever, _, text, video, total, contrastive, terms, logits, _ = trained
    close(text["text"], GOLDEN["train_text_features"], dtype, "train_text_features")
    close(video["video"], F.normalize(GOLDEN["train_video_embeds"], dim=-1), dtype, "train_video_embeds")
    close(retriever.head.similarity(text, video), GOLDEN["train_sims"], dtype, "train_sims")
    ids = tvr_token_ids(GOLDEN["train_text_ids"])
    with torch.no_grad():
        target = retriever.head.caption_prenorm(retriever.backbone.embed_text(ids[:, :-1]))
    kept = torch.arange(ids.shape[1] - 1)[None] < ids.argmax(dim=1, keepdim=True)  # padded positions differ by design
    close(target[kept], GOLDEN["train_caption_tgt"][kept], dtype, "train_caption_tgt")
    close(logits[kept], GOLDEN["train_pred_logits"][kept], dtype, "train_pred_logits")
    close(contrastive, GOLDEN["train_loss_clip"], dtype, "train_loss_clip")
    close(terms["caption"], GOLDEN["train_loss_caption"], dtype, "train_loss_caption")
    close(total, GOLDEN["train_loss"], dtype, "train_loss")


def gradient_close(actual, expected, dtype, name, gap_name):
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, atol=FLOAT64_ATOL, rtol=FLOAT64_GRAD_RTOL, msg=name)
    else:
        atol = 10 * FP32_GAP[gap_name]
        torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=0, msg=name)


def test_gradients_of_every_added_parameter_and_logit_scale(trained, dtype):
    retriever, *_ = trained
    expected = {"backbone.clip.logit_scale": GOLDEN["grads"]["clip.logit_scale"]}
    added = {key: value for key, value in GOLDEN["grads"].items() if key != "clip.logit_scale"}
    expected.update({f"head.{key}": value for key, value in map_reference_head_keys("prompt_switch", added).items()})
    assert len(expected) == len(GOLDEN["grads"])
    for name, grad in expected.items():
        actual = retriever.get_parameter(name).grad
        assert grad.abs().max() > 0, name
        gradient_close(actual, grad, dtype, name, "grads")


def test_the_caption_loss_trains_the_video_tower(trained, dtype):
    *_, caption_grads = trained
    expected = map_reference_head_keys("prompt_switch", GOLDEN["grads_caption_only"])
    for name, grad in expected.items():
        assert grad.abs().max() > 0, name
        gradient_close(caption_grads[f"head.{name}"], grad, dtype, name, "grads_caption_only")


@pytest.fixture(scope="module")
def evaluated(dtype):
    retriever = golden_retriever(dtype).eval()
    frames = GOLDEN["eval_video"].to(dtype)
    with torch.no_grad():
        trace = retriever.head.video_tower.trace(retriever.backbone, frames)
        text = retriever.encode_texts(tvr_token_ids(GOLDEN["eval_text_ids"]))
        video = retriever.encode_videos(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    return retriever, trace, text, video


def test_evaluation_runs_two_groups_per_clip(evaluated, dtype):
    retriever, trace, text, video = evaluated
    assert "frames" not in video  # the captioner's memory is a training-only output
    for layer, expected in GOLDEN["eval_block_out"].items():
        close(trace.block_out[layer], expected, dtype, f"eval_block_out[{layer}]")
    close(trace.agg_attn, GOLDEN["eval_agg_attn"], dtype, "eval_agg_attn")
    close(F.normalize(trace.frames, dim=-1), GOLDEN["eval_frame_embeds_unit"], dtype, "eval_frame_embeds_unit")
    close(video["video"], F.normalize(GOLDEN["eval_video_embeds"], dim=-1), dtype, "eval_video_embeds")
    close(text["text"], GOLDEN["eval_text_features"], dtype, "eval_text_features")
    scores = retriever.head.similarity(text, video)
    close(scores, GOLDEN["eval_sims"], dtype, "eval_sims")
    # the reference's per-video caption layout: [videos, captions of a video, videos]
    grouped = GOLDEN["eval_sims_grouped"]
    close(scores.reshape(grouped.shape[0], grouped.shape[1], -1), grouped, dtype, "eval_sims_grouped")


def test_the_groups_of_a_clip_are_independent(evaluated):
    retriever, trace, *_ = evaluated
    group = CONFIG["num_prompts"]
    halves = rearrange(GOLDEN["eval_video"].to(trace.frames.dtype), "b (s f) ... -> (b s) f ...", f=group)
    with torch.no_grad():
        separate = retriever.head.video_tower.trace(retriever.backbone, halves).frames
    assert torch.equal(rearrange(separate, "(b s) f d -> b (s f) d", b=trace.frames.shape[0]), trace.frames)


def test_whole_clip_aggregation_flag(dtype):
    retriever = golden_retriever(dtype, test_aggregation="whole_clip").eval()
    frames = GOLDEN["eval_video"].to(dtype)
    with torch.no_grad():
        video = retriever.encode_videos(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    expected = F.normalize(GOLDEN["eval_video_embeds_whole_clip_aggregation"], dim=-1)
    close(video["video"], expected, dtype, "eval_video_embeds")
    reference = F.normalize(GOLDEN["eval_video_embeds"], dim=-1).to(dtype)
    assert (video["video"] - reference).abs().max() > 100 * fp_tolerance(dtype, "eval_video_embeds")


def test_switch_is_the_frame_slot_transpose_within_groups():
    group = CONFIG["num_prompts"]
    rows = torch.arange(2 * group * group).reshape(2 * group, group, 1).float()  # value = row * G + slot
    switched = switch_prompts(rows, group)
    for row in range(2 * group):
        base, frame = divmod(row, group)
        for slot in range(group):
            assert switched[row, slot, 0] == (base * group + slot) * group + frame
    assert torch.equal(switch_prompts(switched, group), rows)


def test_reference_keys_map_onto_the_tower_and_captioner():
    added = {
        k: v for k, v in GOLDEN["state_dict"].items() if k.startswith(ADDED_TOWER_KEYS) or k.startswith("caption_")
    }
    mapped = map_reference_head_keys("prompt_switch", added)
    assert mapped["video_tower.prompts"].shape == (CONFIG["num_prompts"], CONFIG["num_prompts"], CONFIG["vision_width"])
    assert torch.equal(mapped["video_tower.aggregate.in_proj_weight"], added["clip.vision_model.attn.in_proj_weight"])
    assert set(mapped) - {"video_tower.prompts"} == {
        key.replace("clip.vision_model.attn.", "video_tower.aggregate.")
        for key in added
        if "prompt_embedding" not in key
    }
    with pytest.raises(KeyError, match="not one of Prompt Switch's reference weights"):
        map_reference_head_keys("prompt_switch", {"clip.visual_projection.weight": torch.zeros(1)})


def test_a_checkpoint_of_another_prompt_count_or_tower_is_refused():
    state_dict = golden_retriever(torch.float32).state_dict()
    other = Retriever(
        {"model_name": None, "architecture": ARCHITECTURE}, {**HEAD, "num_prompts": CONFIG["num_prompts"] - 1}
    )
    with pytest.raises(TowerMismatchError, match="num_prompts"):
        other.load_state_dict(state_dict)
    meanpool = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {"name": "meanpool"})
    with pytest.raises(TowerMismatchError, match="prompt_switch"):
        meanpool.load_state_dict(state_dict, strict=False)


def test_fresh_tower_is_clip_on_the_cls_and_the_init_facts():
    retriever = Retriever({"model_name": None, "architecture": ARCHITECTURE}, dict(HEAD))
    head, tower = retriever.head, retriever.head.video_tower
    assert (
        torch.count_nonzero(tower.aggregate.out_proj.weight) == 0 == torch.count_nonzero(tower.aggregate.out_proj.bias)
    )
    table = retriever.backbone.clip.token_embedding.weight
    assert torch.equal(head.caption_head.weight, table[: CONFIG["vocab_size"]])
    assert torch.count_nonzero(head.caption_head.bias) == 0
    layers = head.caption_transformer.layers
    assert all(torch.equal(a, b) for a, b in zip(layers[0].state_dict().values(), layers[1].state_dict().values()))
    frames = GOLDEN["eval_video"]
    with torch.no_grad():
        trace = tower.eval().trace(retriever.backbone, frames)
    torch.testing.assert_close(trace.post_ln, retriever.backbone.clip.visual.ln_post(trace.cls_last))


def test_learning_rate_groups_follow_the_flag():
    for group, at_backbone_rate in (("clip", True), ("new", False)):
        head = Retriever(
            {"model_name": None, "architecture": ARCHITECTURE}, {**HEAD, "aggregation_lr_group": group}
        ).head
        tower = {name for name, _ in head.tower_parameters()}
        new = {name for name, _ in head.new_parameters()}
        assert "video_tower.prompts" in tower
        assert ("video_tower.aggregate.in_proj_weight" in tower) is not at_backbone_rate
        assert "video_tower.aggregate.in_proj_weight" not in new
        assert "caption_head.weight" in new


def test_frames_not_a_multiple_of_the_group_or_too_many_prompts_are_refused():
    retriever = golden_retriever(torch.float32)
    frames = GOLDEN["train_video"][:, : CONFIG["num_prompts"] - 1]
    with pytest.raises(ValueError, match=f"multiple of {CONFIG['num_prompts']}"):
        retriever.encode_videos(frames, torch.ones(frames.shape[:2], dtype=torch.bool))
    geometry = VisionGeometry.of_architecture(ARCHITECTURE)
    with pytest.raises(ValueError, match="exceeds"):
        PromptSwitchTower.check_fits(geometry, num_prompts=geometry.tokens_per_frame + 1)
    assert PromptSwitchTower.frames_multiple_of(num_prompts=CONFIG["num_prompts"]) == CONFIG["num_prompts"]


def sampler_cases(kind: str):
    """The fixture's ``(frames, video length) -> reference indices`` (before the reference repeats the last one)."""
    for case, indices in ABOUT["sampler"][kind].items():
        frames, length = (int(part) for part in case.removeprefix("frames").split("_vlen"))
        yield frames, length, indices


def test_segment_passes_uniform_is_the_reference_test_sampler():
    segments = CONFIG["num_prompts"]
    cases = list(sampler_cases("uniform"))
    assert {frames for frames, _, _ in cases} == {CONFIG["num_frames"], CONFIG["num_test_frames"]}
    for frames, length, reference in cases:
        sampler = create_sampler("segment_passes", max_frames=frames, segments=segments)
        expected = reference + [reference[-1]] * (frames - len(reference))
        assert sampler(length, fps=1.0) == expected, (frames, length)
        if frames == segments:  # one pass: X-Pool's segment_uniform, which the training recipe can use too
            assert create_sampler("segment_uniform", max_frames=frames)(length, fps=1.0) == expected


def test_segment_passes_random_stays_in_segments_and_survives_short_videos():
    segments = CONFIG["num_prompts"]
    for frames, length, reference in sampler_cases("rand_seeded"):
        sampler = create_sampler("segment_passes", max_frames=frames, segments=segments, mode="random")
        drawn = sampler(length, fps=1.0, rng=random.Random(0))
        assert len(drawn) == frames
        # where the reference crashed (one-frame segments: IndexError), tvr takes the segment's frame
        assert not isinstance(reference, str) or "IndexError" in reference
        edges = np.linspace(0, length, segments + 1).astype(int)
        for index, (low, high) in zip(drawn, zip(edges[:-1], edges[1:])):
            assert low <= index < max(low + 1, high - 1)  # never a segment's last frame, unless it is its only one


def test_frame_counts_not_in_whole_passes_are_refused():
    with pytest.raises(ValueError, match="multiple of segments"):
        create_sampler("segment_passes", max_frames=CONFIG["num_test_frames"] + 1, segments=CONFIG["num_prompts"])


@pytest.mark.parametrize(
    "overrides, key, shown",
    [
        (  # the samplers' own rule holds (6 = 2 x 3) but the tower's groups of 4 do not divide 6
            ["data.video.train_sampler.max_frames=6", "data.video.train_sampler.segments=3"],
            "data.video.train_sampler.max_frames",
            "clips must hold a multiple of 4 frames",
        ),
        (  # both rules, both named: the tower's groups and the sampler's whole passes
            ["data.video.eval_sampler.max_frames=10"],
            "data.video.eval_sampler.max_frames",
            "must be a multiple of segments 4",
        ),
        (["head.num_prompts=40"], "head.video_tower", "num_prompts 40 exceeds the 17 tokens per frame"),
        (
            [f"data.video.eval_sampler.{key}" for key in ("name=clip4clip", "segments=null", "mode=null")],
            "data.video.eval_sampler.name",
            "must get full clips",
        ),
    ],
)
def test_bad_frame_and_prompt_counts_are_refused_at_start_up_naming_the_key(overrides, key, shown, tmp_path):
    cfg = compose_train(["experiment=synthetic_promptswitch", *overrides], tmp_path, tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        validate_train_config(cfg)
    assert error.value.key == key and shown in str(error.value), str(error.value)
