"""TempMe: the tempme video tower + lora_text text tower + head reproduce the original implementation
(LunarShen/TempMe, golden fixture), end to end from pixels and token ids, through tvr's public key mapping."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES
from tvr.checkpoint import load_state_dict_checked
from tvr.models.convert import convert_reference_state_dict, map_reference_head_keys
from tvr.models.losses import create_loss
from tvr.models.retriever import Retriever
from tvr.models.towers import TowerMismatchError
from tvr.models.towers import tempme as tempme_tower
from tvr.models.towers.token_merging import ScheduleError, match, merge, plan_schedule, suggest_groups

GOLDEN = torch.load(FIXTURES / "golden" / "tempme_golden.pt", weights_only=True)
ABOUT = json.loads((FIXTURES / "golden" / "tempme_golden.json").read_text())
# The fixture's CLIP: 12-layer ViT of width 64 (2 heads), 6px patches on 42px frames = 50 tokens per frame,
# like ViT-B/32's; a 2-layer text tower. Its vocabulary has 256 ids; tvr's text towers use CLIP's BPE size,
# so the 256 embedding rows are copied into the first rows of a 49408-row table (the rest are never read).
ARCHITECTURE = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 42, "patch_size": 6, "width": 64, "layers": 12, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
NO_MERGING = {"tome_r": 0, "clip_layers": [], "clip_groups": []}


def golden_retriever(**head_options) -> Retriever:
    retriever = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {"name": "tempme", **head_options})
    state_dict = convert_reference_state_dict("tempme", GOLDEN["state_dict"])
    if not head_options.get("clip_layers", True):  # no clip layers: no temporal embeddings to load
        state_dict = {key: value for key, value in state_dict.items() if "temporal_embeddings" not in key}
    vocabulary = state_dict["backbone.clip.token_embedding.weight"]
    table = retriever.state_dict()["backbone.clip.token_embedding.weight"].clone()
    table[: vocabulary.shape[0]] = vocabulary
    state_dict["backbone.clip.token_embedding.weight"] = table
    load_state_dict_checked(retriever, state_dict, strict=True, source="tempme_golden.pt")
    return retriever.eval()


@pytest.fixture(scope="module")
def retriever():
    return golden_retriever()


def unit_frame_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference's video embedding: masked mean of unit frame vectors, not re-normalised."""
    weights = mask.float()[..., None]
    return (F.normalize(frames, dim=-1) * weights).sum(1) / weights.sum(1).clamp(min=1)


def test_reference_weights_map_onto_the_towers():
    mapped = map_reference_head_keys("tempme", {k: v for k, v in GOLDEN["state_dict"].items() if "TVPt" in k})
    assert len(mapped) == 12 * 2 + 2 * 2 + 3
    assert mapped["video_tower.lora.3.down"].shape == (8, 64) and mapped["video_tower.lora.3.up"].shape == (192, 8)
    assert mapped["text_tower.lora.1.up"].shape == (192, 8)
    torch.testing.assert_close(
        mapped["video_tower.temporal_embeddings.9"],
        GOLDEN["state_dict"]["clip.visual.transformer.resblocks.9.TVPt_Video_Positional_embedding"][0, :, 0],
    )
    with pytest.raises(KeyError, match="not one of TempMe's reference weights"):
        map_reference_head_keys("tempme", {"clip.visual.proj": torch.zeros(1)})


def test_token_counts_per_block_match_the_reference(retriever):
    tower = retriever.head.video_tower
    assert tower.tokens_per_video() == ABOUT["tokens_per_video_after_block"]
    for step, reference in zip(tower.plan, ABOUT["schedule_run"]):
        assert (step.cross or None, step.intra, step.tokens_out, step.clips_out, step.protected_out) == (
            reference["r_cross_clip"],
            reference["r_intra"],
            reference["tokens_per_seq_out"],
            reference["clips_per_video_out"],
            reference["cls_per_seq_out"],
        ), step.index


def test_text_and_video_embeddings_and_similarities(retriever):
    with torch.no_grad():
        text = retriever.text_features(GOLDEN["text_ids"])
        video = retriever.frame_features(GOLDEN["video"], GOLDEN["video_mask"].bool())
        scores = retriever.head.similarity(retriever.head.encode_text(text), retriever.head.encode_video(video))
    torch.testing.assert_close(text.sentence, GOLDEN["text_embeds"], atol=1e-5, rtol=0)
    torch.testing.assert_close(video.frames, GOLDEN["frame_feats"], atol=1e-5, rtol=0)
    torch.testing.assert_close(unit_frame_mean(video.frames, video.mask), GOLDEN["video_embeds"], atol=1e-5, rtol=0)
    scale = GOLDEN["logit_scale_log"].exp()
    torch.testing.assert_close(scores, GOLDEN["logits"] / scale, atol=1e-5, rtol=0)  # cosines
    torch.testing.assert_close(retriever.scaled(scores), GOLDEN["logits"], atol=1e-4, rtol=0)  # x100


def test_merge_decisions_are_the_reference_ones(retriever, monkeypatch):
    decisions = []

    def recording_match(metric, protected, r):
        decision = match(metric, protected, r)
        decisions.append(decision)
        return decision

    monkeypatch.setattr(tempme_tower, "match", recording_match)  # instrumentation only: the maths is tvr's
    with torch.no_grad():
        retriever.frame_features(GOLDEN["video"], GOLDEN["video_mask"].bool())
    assert len(decisions) == len(GOLDEN["merges"]) == 15
    for decision, reference in zip(decisions, GOLDEN["merges"]):
        ours = decision.absolute()
        assert decision.protected == reference["cls_num"]
        for part in ("src", "dst", "unm"):
            assert torch.equal(ours[part], reference[f"{part}_abs"].long()), (
                reference["block"],
                reference["kind"],
                part,
            )


def test_partially_masked_video(retriever):
    mask = GOLDEN["video_mask_partial"].bool()
    with torch.no_grad():
        video = retriever.frame_features(GOLDEN["video"], mask)
    torch.testing.assert_close(
        unit_frame_mean(video.frames, mask), GOLDEN["video_embeds_partial_mask"], atol=1e-5, rtol=0
    )


def test_without_merging_it_is_per_frame_clip_with_lora():
    retriever = golden_retriever(**NO_MERGING)
    assert retriever.head.video_tower.tokens_per_video() == [600] * 12
    with torch.no_grad():
        video = retriever.frame_features(GOLDEN["video"], GOLDEN["video_mask"].bool())
    torch.testing.assert_close(
        unit_frame_mean(video.frames, video.mask), GOLDEN["video_embeds_nomerge"], atol=1e-5, rtol=0
    )


def test_loss_and_gradients_of_every_trained_weight():
    retriever = golden_retriever()
    retriever.freeze_for_training()
    trainable = {name for name, param in retriever.named_parameters() if param.requires_grad}
    assert trainable == {
        f"head.{name}" for name, _ in retriever.head.tower_parameters()
    }  # CLIP frozen, logit_scale too
    ids, mask = GOLDEN["text_ids"][:2], GOLDEN["video_mask"].bool()
    scores = retriever.head.similarity(retriever.encode_texts(ids), retriever.encode_videos(GOLDEN["video"], mask))
    loss = create_loss("infonce")(retriever.scaled(scores))
    torch.testing.assert_close(loss, GOLDEN["loss"], atol=1e-5, rtol=0)
    loss.backward()
    expected = map_reference_head_keys("tempme", GOLDEN["grads"])
    assert len(expected) == 31
    for name, grad in expected.items():
        param = retriever.head.get_parameter(name)
        assert param.grad.abs().max() > 0, name
        torch.testing.assert_close(
            param.grad, grad.reshape(param.shape), atol=1e-4 * grad.abs().max().item(), rtol=0, msg=name
        )


@pytest.mark.slow
def test_videos_are_encoded_independently_and_repeatably(retriever):
    """The merge state lives in the forward pass: a batch gives what each video gives alone, every time."""
    mask = GOLDEN["video_mask"].bool()
    with torch.no_grad():
        both = retriever.frame_features(GOLDEN["video"], mask).frames
        again = retriever.frame_features(GOLDEN["video"], mask).frames
        second = retriever.frame_features(GOLDEN["video"][1:], mask[1:]).frames
    assert torch.equal(both, again)
    torch.testing.assert_close(second[0], both[1], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- merge primitive
@pytest.mark.parametrize("protected", [1, 2])
def test_bipartite_merge_by_hand(protected):
    """Tokens after ``protected`` CLS alternate A (even absolute index), B (odd). A token merges into its most
    similar B token; output = [CLS, kept A ascending, B]; B becomes the size-weighted mean."""
    directions = {
        "a0": [1.0, 0.0],
        "b0": [0.9, 0.1],
        "a1": [0.0, 1.0],
        "b1": [0.1, 0.9],
        "a2": [1.0, 1.0],
        "b2": [-1.0, 0.2],
    }
    order = ["a0", "b0", "a1", "b1", "a2", "b2"] if protected % 2 == 0 else ["b0", "a0", "b1", "a1", "b2", "a2"]
    metric = torch.tensor([[[5.0, 5.0]] * protected + [directions[name] for name in order]])
    x = torch.arange(metric.shape[1], dtype=torch.float32).reshape(1, -1, 1) * 10
    size = torch.tensor([[1.0] * protected + [1.0, 3.0, 1.0, 1.0, 2.0, 1.0]])
    decision = match(metric, protected, r=2)
    merged, new_size = merge(decision, x, size)
    position = {name: protected + index for index, name in enumerate(order)}
    # a0 ~ b0 (cos 0.99) and a1 ~ b1 (0.99) beat a2's best (0.71): a0 and a1 go, a2 stays
    assert decision.absolute()["src"].sort().values.tolist() == [[position["a0"], position["a1"]]]
    value = {name: 10.0 * position[name] for name in order}
    weight = dict(zip(order, size[0, protected:].tolist()))
    b0 = (weight["b0"] * value["b0"] + weight["a0"] * value["a0"]) / (weight["b0"] + weight["a0"])
    b1 = (weight["b1"] * value["b1"] + weight["a1"] * value["a1"]) / (weight["b1"] + weight["a1"])
    expected = [10.0 * i for i in range(protected)] + [value["a2"], b0, b1, value["b2"]]
    torch.testing.assert_close(merged[0, :, 0], torch.tensor(expected))
    expected_size = [1.0] * protected + [
        weight["a2"],
        weight["b0"] + weight["a0"],
        weight["b1"] + weight["a1"],
        weight["b2"],
    ]
    torch.testing.assert_close(new_size[0], torch.tensor(expected_size))


def test_merge_carries_gradients_through_the_averages_only():
    x = torch.randn(2, 9, 4, requires_grad=True)
    metric = x.detach().clone().requires_grad_(True)
    merged, _ = merge(match(metric, 1, 3), x, None)
    merged.sum().backward()
    assert x.grad is not None and metric.grad is None


# ------------------------------------------------------------------------------------------- schedule
def test_vit_b32_and_b16_schedules_match_the_spec():
    b32 = plan_schedule(12, 50, 12, 2, [8, 9, 10], [2, 2, 3], 0.3, 0.1)
    assert [s.tokens_out * s.clips_out for s in b32][-1] == 97 and [(s.cross, s.intra) for s in b32[8:]] == [
        (20, 4),
        (26, 6),
        (50, 11),
        (0, 10),
    ]
    b16 = plan_schedule(12, 197, 12, 2, [8, 9, 10], [2, 2, 3], 0.3, 0.1)
    assert [s.tokens_out for s in b16][7:] == [181, 229, 289, 547, 493]


def test_schedule_that_does_not_fit_the_frames_names_one_that_does():
    with pytest.raises(ScheduleError, match=r"do not fit 64 frames.*clip_groups=\[4, 4, 4\]"):
        plan_schedule(12, 50, 64, 2, [8, 9, 10], [2, 2, 3], 0.3, 0.1)
    assert (
        suggest_groups(12, 3) == [2, 2, 3] and suggest_groups(8, 3) == [2, 2, 2] and suggest_groups(32, 3) == [2, 4, 4]
    )


def test_a_clip_layer_of_group_one_only_merges_within_clips_as_the_reference():
    """The reference's ToMeBlock skips the join, the temporal embedding and the cross merge when r_f = 1 and
    runs only the intra merge, whose budget still subtracts the unused cross budget. By hand, 12 frames of 50
    tokens, tome_r 2, groups [1, 4, 3] at blocks 8-10: 34 tokens enter block 8; r_c = min(int(34 * 0.3), 33 // 2)
    = 10 (not applied), r_i = min(int((34 - 10) * 0.1), (33 - 10) // 2) = 2 -> 32 tokens, 1 CLS, 12 clips.
    Block 9 (g 4): r_c = min(int(128 * 0.3), 124 // 2) = 38, r_i = min(int(90 * 0.1), 86 // 2) = 9 -> 81.
    Block 10 (g 3): r_c = min(int(243 * 0.3), 231 // 2) = 72, r_i = min(int(171 * 0.1), 159 // 2) = 17 -> 154.
    Block 11: r_i = min(int(154 * 0.1), 142 // 2) = 15 -> 139 tokens per video."""
    options = {"clip_groups": [1, 4, 3]}
    plan = plan_schedule(12, 50, 12, 2, [8, 9, 10], options["clip_groups"], 0.3, 0.1)
    assert [(s.kind, s.cross, s.intra, s.tokens_out, s.protected_out, s.clips_out) for s in plan[8:]] == [
        ("clip", 0, 2, 32, 1, 12),
        ("clip", 38, 9, 81, 4, 3),
        ("clip", 72, 17, 154, 12, 1),
        ("intra", 0, 15, 139, 12, 1),
    ]
    torch.manual_seed(0)
    model = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {"name": "tempme", **options}).eval()
    tower = model.head.video_tower
    assert sorted(tower.temporal_embeddings) == ["10", "9"]  # none for the block that joins nothing
    decisions = []

    def recording_match(metric, protected, r):
        decisions.append((protected, r, metric.shape))
        return match(metric, protected, r)

    video = torch.randn(2, 12, 3, 42, 42)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempme_tower, "match", recording_match)
        features = tower(model.backbone, video, with_tokens=True)
    # 8 image merges, then block 8's intra merge alone: on the 24 frames' own 34 tokens, keys of 32 channels
    assert decisions[8] == (1, 2, torch.Size([24, 34, 32])) and len(decisions) == 8 + 1 + 2 + 2 + 1
    assert decisions[9][:2] == (4, 38) and features.tokens.shape[1] == 139
    assert features.frames.shape == (2, 12, 32)


def test_suggested_groups_join_clips_unless_groups_of_one_are_asked_for():
    assert suggest_groups(4, 3) == [2, 2] and suggest_groups(7, 2) == [7] and suggest_groups(1, 2) == []
    assert suggest_groups(4, 3, allow_single=True) == [1, 2, 2]
    with pytest.raises(ScheduleError, match=r"fits 4 frames: clip_groups=\[2, 2\] with clip_layers=\[1, 2\]"):
        plan_schedule(4, 50, 4, 2, [1, 2, 3], [2, 2, 2], 0.3, 0.1)


def test_schedule_that_removes_more_tokens_than_a_frame_holds():
    with pytest.raises(ScheduleError, match=r"tome_r=5 removes more tokens than block \d+ can merge.*use tome_r=1 "):
        plan_schedule(12, 17, 8, 5, [8, 9, 10], [2, 2, 2], 0.3, 0.1)  # 16 patches, 8 image blocks
    with pytest.raises(ScheduleError, match="below the vision depth 6"):
        plan_schedule(6, 17, 8, 1, [8, 9, 10], [2, 2, 2], 0.3, 0.1)


# ------------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_refuses_another_tower_or_schedule(retriever):
    state = retriever.state_dict()
    other = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {"name": "tempme", "tome_r": 1})
    with pytest.raises(
        TowerMismatchError,
        match=r"trained with video tower 'tempme' \(.*tome_r=2.*this model's video tower is 'tempme' \(.*tome_r=1",
    ):
        other.load_state_dict(state)
    per_frame = Retriever({"model_name": None, "architecture": ARCHITECTURE}, {"name": "meanpool"})
    with pytest.raises(
        TowerMismatchError, match="trained with video tower 'tempme'.*this model's video tower is 'per_frame'"
    ):
        load_state_dict_checked(per_frame, state)
    with pytest.raises(TowerMismatchError, match="trained with video tower 'per_frame'.*video tower is 'tempme'"):
        other.load_state_dict(per_frame.state_dict())


def test_the_tower_can_return_its_merged_token_set(retriever):
    """Beside the per-frame vectors, the tower offers the video's 97 tokens (12 CLS + 85 merged) with a mask."""
    with torch.no_grad():
        video = retriever.head.video_tower(
            retriever.backbone, GOLDEN["video"], GOLDEN["video_mask"].bool(), with_tokens=True
        )
    assert video.tokens.shape == (2, 97, 32) and video.token_mask.all() and video.patches is None
    torch.testing.assert_close(video.tokens[:, :12], video.frames)  # the CLS tokens lead, in frame order
