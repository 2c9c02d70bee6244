"""HBI's building blocks (tvr.models.heads.hbi) reproduce the reference's own outputs (hbi_golden: jpthu17/HBI
run in float64, reference-named weights loaded through tvr's key mapping), and behave where the fixture is
silent: seeded DPC-KNN noise, short captions, padding, gradients, tiling."""

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES
from tvr.models.heads.base import rename_reference_keys
from tvr.models.heads.hbi import (
    LEVELS,
    HBIBlocks,
    banzhaf_distillation,
    banzhaf_interaction,
    banzhaf_kl,
    dpc_knn_clusters,
    kl_mean,
    pair_cell_mask,
    positive_pair_maps,
    reference_key_renames,
    self_distillation,
    token_similarity_maps,
    token_weights,
    wti_similarity,
)
from tvr.models.heads.hbi.token_merge import cluster_shares
from tvr.models.losses import create_loss

GOLDEN = torch.load(FIXTURES / "golden" / "hbi_golden.pt", weights_only=True)
SKL, KL = 1.0, 2.0  # the fixture's config (README train commands)
EXACT = {"atol": 1e-9, "rtol": 0}  # float64 against the float64 reference (which expects ~1e-12)


def _golden(key: str, dtype=torch.float64) -> torch.Tensor:
    return GOLDEN[key].to(dtype)


def _blocks(dtype=torch.float64) -> HBIBlocks:
    reference = {key: value for key, value in GOLDEN["state_dict"].items() if not key.startswith("clip.")}
    blocks = HBIBlocks(64)
    blocks.load_state_dict(rename_reference_keys(reference, reference_key_renames()), strict=True)
    return blocks.to(dtype)


def _inputs(prefix: str, dtype=torch.float64):
    return (
        _golden(f"{prefix}_text_feat", dtype),
        GOLDEN[f"{prefix}_text_mask"],
        _golden(f"{prefix}_video_feat", dtype),
        GOLDEN[f"{prefix}_video_mask"],
    )


def _recorded_noise(prefix: str, dtype=torch.float64):
    """The DPC-KNN density noise the reference drew in each CTM call of its ``prefix`` forward."""
    return lambda side, merge: _golden(f"{prefix}_dpc_noise_{side[0]}_ctm{merge}", dtype)


def _hierarchy(blocks, text, text_mask, video, video_mask, noise):
    """Each side's tokens per level and the CTM outputs on the way, merged in the reference's call order
    (t_ctm0, v_ctm0, t_ctm1, v_ctm1); ``noise(side, merge)`` gives each call's DPC-KNN noise (None: drawn)."""
    tokens = {"text": [text], "video": [video]}
    masks = {"text": text_mask, "video": video_mask}
    clustered = {}
    for merge in range(len(LEVELS) - 1):
        for side, merges in (("text", blocks.text_merges), ("video", blocks.video_merges)):
            clustered[side, merge] = merges[merge].ctm(
                tokens[side][merge], masks[side] if merge == 0 else None, density_noise=noise(side, merge)
            )
            tokens[side].append(merges[merge].block(clustered[side, merge]))
    return tokens, clustered


def _level_masks(level, text_mask, video_mask):
    return (text_mask, video_mask) if level == 0 else (None, None)  # only the entity level has padding


def _level_similarity(blocks, level, text, video, text_mask=None, video_mask=None):
    text_weights = token_weights(blocks.text_weights[level](text), text_mask)
    video_weights = token_weights(blocks.video_weights[level](video), video_mask)
    return wti_similarity(
        F.normalize(text, dim=-1), F.normalize(video, dim=-1), text_weights, video_weights, text_mask, video_mask
    )


def _training_losses(blocks, text, text_mask, video, video_mask, noise, logit_scale):
    """HBI.forward composed from the blocks: per level contrastive + Banzhaf distillation, plus
    self-distillation towards the entity level."""
    tokens, _ = _hierarchy(blocks, text, text_mask, video, video_mask, noise)
    contrastive = create_loss("infonce")
    sims, terms = [], []
    for level in range(len(LEVELS)):
        t, v = tokens["text"][level], tokens["video"][level]
        masks = _level_masks(level, text_mask, video_mask)
        sims.append(_level_similarity(blocks, level, t, v, *masks))
        maps = positive_pair_maps(F.normalize(t, dim=-1), F.normalize(v, dim=-1), *masks)
        cell_mask = pair_cell_mask(text_mask, video_mask) if level == 0 else None
        banzhaf = banzhaf_distillation(maps, blocks.students[level], blocks.teacher, cell_mask)
        terms.append(contrastive(logit_scale * sims[-1]) + SKL * banzhaf)
    return sum(terms) + KL * self_distillation(*sims), terms, sims


# --- golden parity -----------------------------------------------------------------------------------------


def test_every_reference_key_maps_onto_the_blocks():
    blocks = HBIBlocks(64)
    reference = {key: value for key, value in GOLDEN["state_dict"].items() if not key.startswith("clip.")}
    renamed = rename_reference_keys(reference, reference_key_renames("head.blocks."))
    assert sorted(renamed) == sorted(f"head.blocks.{key}" for key in blocks.state_dict())
    assert "head.blocks.students.0.bn.running_var" in renamed  # unused, kept for strict loading
    assert "head.blocks.text_weights.1.0.weight" in renamed  # text_weight_fc0, not caught by text_weight_fc.


@pytest.mark.parametrize("prefix", ["eval", "train"])
def test_entity_wti_matches_reference(prefix):
    blocks = _blocks()
    text, text_mask, video, video_mask = _inputs(prefix)
    with torch.no_grad():
        maps = token_similarity_maps(F.normalize(text, dim=-1), F.normalize(video, dim=-1), text_mask, video_mask)
        sims = _level_similarity(blocks, 0, text, video, text_mask, video_mask)
    torch.testing.assert_close(maps, _golden(f"{prefix}_R_entity"), **EXACT)
    torch.testing.assert_close(sims, _golden(f"{prefix}_sim_entity"), **EXACT)
    if prefix == "eval":  # the retrieval score: rate [1, 0, 0] keeps the entity level only
        torch.testing.assert_close(sims, _golden("eval_sim"), **EXACT)


@pytest.mark.parametrize("prefix", ["eval", "train"])
def test_token_merges_match_reference(prefix):
    blocks = _blocks()
    with torch.no_grad():
        tokens, clustered = _hierarchy(blocks, *_inputs(prefix), _recorded_noise(prefix))
    for (side, merge), out in clustered.items():
        name = f"{side[0]}_ctm{merge}"
        assert torch.equal(out.cluster_ids, GOLDEN[f"{prefix}_idx_cluster_{name}"]), name
        if prefix == "train":
            torch.testing.assert_close(out.tokens, _golden(f"train_{name}_token_x"), **EXACT)
            torch.testing.assert_close(out.scores, _golden(f"train_{name}_token_score"), **EXACT)  # -inf at padding
            torch.testing.assert_close(out.merged, _golden(f"train_{name}_merged_x"), **EXACT)
            torch.testing.assert_close(tokens[side][merge + 1], _golden(f"train_{side[0]}_block{merge}_x"), **EXACT)
    if (
        prefix == "train"
    ):  # the reference's bookkeeping: cluster and merge weight of every original token after both merges
        for side in ("text", "video"):
            first, second = clustered[side, 0], clustered[side, 1]
            assert torch.equal(first.cluster_ids, GOLDEN[f"train_{side[0]}_ctm0_idx_token"])
            assert torch.equal(
                second.cluster_ids.gather(1, first.cluster_ids), GOLDEN[f"train_{side[0]}_ctm1_idx_token"]
            )
            shares = [cluster_shares(out.scores.exp(), out.cluster_ids, out.merged.shape[1]) for out in (first, second)]
            torch.testing.assert_close(shares[0], _golden(f"train_{side[0]}_ctm0_agg_weight"), **EXACT)
            torch.testing.assert_close(
                shares[0] * shares[1].gather(1, first.cluster_ids), _golden(f"train_{side[0]}_ctm1_agg_weight"), **EXACT
            )


@pytest.mark.parametrize("prefix", ["eval", "train"])
def test_action_and_event_wti_match_reference(prefix):
    blocks = _blocks()
    with torch.no_grad():
        tokens, _ = _hierarchy(blocks, *_inputs(prefix), _recorded_noise(prefix))
        for level in (1, 2):
            text, video = tokens["text"][level], tokens["video"][level]
            torch.testing.assert_close(
                _level_similarity(blocks, level, text, video), _golden(f"{prefix}_sim_{LEVELS[level]}"), **EXACT
            )
            if prefix == "train":
                maps = token_similarity_maps(F.normalize(text, dim=-1), F.normalize(video, dim=-1))
                torch.testing.assert_close(maps, _golden(f"train_R_{LEVELS[level]}"), **EXACT)
        for level, name in enumerate(LEVELS):
            if prefix == "train":  # raw weight logits, before masking and softmax
                torch.testing.assert_close(
                    blocks.text_weights[level](tokens["text"][level]), _golden(f"train_wti_logits_text_{name}"), **EXACT
                )
                torch.testing.assert_close(
                    blocks.video_weights[level](tokens["video"][level]),
                    _golden(f"train_wti_logits_video_{name}"),
                    **EXACT,
                )


def test_banzhaf_networks_match_reference():
    blocks = _blocks()
    text, text_mask, video, video_mask = _inputs("train")
    entity_maps = positive_pair_maps(F.normalize(text, dim=-1), F.normalize(video, dim=-1), text_mask, video_mask)
    torch.testing.assert_close(entity_maps, _golden("train_banzhaf_input_entity"), **EXACT)
    with torch.no_grad():
        for level, name in enumerate(LEVELS):
            maps = _golden(f"train_banzhaf_input_{name}").unsqueeze(1)
            torch.testing.assert_close(
                blocks.students[level](maps).squeeze(1), _golden(f"train_banzhaf_student_{name}"), **EXACT
            )
            torch.testing.assert_close(
                blocks.teacher(maps).squeeze(1), _golden(f"train_banzhaf_teacher_{name}"), **EXACT
            )
        torch.testing.assert_close(
            blocks.teacher(_golden("est_R_pos").unsqueeze(1)).squeeze(1), _golden("est_teacher_out"), **EXACT
        )


def test_kl_terms_match_reference():
    blocks = _blocks()
    kl_terms = _golden("train_kl_terms")
    cell_mask = pair_cell_mask(GOLDEN["train_text_mask"], GOLDEN["train_video_mask"])
    for level, name in enumerate(LEVELS):
        student, teacher = _golden(f"train_kl_student_in_{name}"), _golden(f"train_kl_teacher_in_{name}")
        torch.testing.assert_close(kl_mean(student, teacher), kl_terms[2 * level], **EXACT)
        torch.testing.assert_close(
            kl_mean(student.permute(2, 1, 0), teacher.permute(2, 1, 0)), kl_terms[2 * level + 1], **EXACT
        )
        torch.testing.assert_close(banzhaf_kl(student, teacher), kl_terms[2 * level : 2 * level + 2].sum(), **EXACT)
        maps = _golden(f"train_banzhaf_input_{name}")
        loss = banzhaf_distillation(maps, blocks.students[level], blocks.teacher, cell_mask if level == 0 else None)
        torch.testing.assert_close(loss, kl_terms[2 * level : 2 * level + 2].sum(), **EXACT)
    sims = [_golden(f"train_sim_{name}") for name in LEVELS]
    torch.testing.assert_close(self_distillation(*sims), kl_terms[6:].sum(), **EXACT)


def test_full_training_loss_matches_reference():
    blocks = _blocks()
    logit_scale = _golden("logit_scale_log").exp()
    total, terms, sims = _training_losses(blocks, *_inputs("train"), _recorded_noise("train"), logit_scale)
    crossen = torch.stack([F.cross_entropy(logit_scale * s, torch.arange(4)) for sim in sims for s in (sim, sim.t())])
    torch.testing.assert_close(crossen, _golden("train_crossen_terms"), **EXACT)
    torch.testing.assert_close(terms[1], _golden("train_loss_action"), **EXACT)
    torch.testing.assert_close(terms[2], _golden("train_loss_event"), **EXACT)
    torch.testing.assert_close(total, _golden("train_loss_total"), **EXACT)


def test_monte_carlo_target_and_estimator_loss_match_reference():
    blocks = _blocks()
    text, text_mask, video, video_mask = _inputs("est")
    with torch.no_grad():
        maps = positive_pair_maps(F.normalize(text, dim=-1), F.normalize(video, dim=-1), text_mask, video_mask)
        text_weights = token_weights(blocks.text_weights[0](text), text_mask)
        video_weights = token_weights(blocks.video_weights[0](video), video_mask)
    torch.testing.assert_close(maps, _golden("est_R_pos"), **EXACT)
    torch.testing.assert_close(text_weights, _golden("est_text_weight"), **EXACT)
    torch.testing.assert_close(video_weights, _golden("est_video_weight"), **EXACT)

    recorded = (GOLDEN["est_mc_keep_text"], GOLDEN["est_mc_keep_video"])  # the reference's coalitions, replayed
    target = banzhaf_interaction(maps, text_mask, video_mask, text_weights, video_weights, coalitions=recorded)
    torch.testing.assert_close(target, _golden("est_mc_target"), atol=1e-9, rtol=1e-12)  # x1000 scale
    with torch.no_grad():
        predicted = blocks.teacher(maps.unsqueeze(1)).squeeze(1) * pair_cell_mask(text_mask, video_mask)
    torch.testing.assert_close(F.mse_loss(predicted, target), _golden("est_loss"), atol=1e-9, rtol=1e-12)


def test_float32_scores_and_clusters_match_reference():
    blocks = _blocks(torch.float32)
    text, text_mask, video, video_mask = _inputs("eval", torch.float32)
    with torch.no_grad():
        tokens, clustered = _hierarchy(
            blocks, text, text_mask, video, video_mask, _recorded_noise("eval", torch.float32)
        )
        for level, name in enumerate(LEVELS):
            masks = _level_masks(level, text_mask, video_mask)
            sims = _level_similarity(blocks, level, tokens["text"][level], tokens["video"][level], *masks)
            torch.testing.assert_close(sims, _golden(f"eval_sim_{name}", torch.float32), atol=1e-5, rtol=0)
    for (side, merge), out in clustered.items():
        assert torch.equal(out.cluster_ids, GOLDEN[f"eval_idx_cluster_{side[0]}_ctm{merge}"])


# --- behaviour ---------------------------------------------------------------------------------------------


def test_dpc_knn_noise_comes_from_the_generator_only():
    tokens = torch.eye(10, dtype=torch.float64).expand(
        4, 10, 10
    )  # equidistant tokens: the density noise alone picks the centres
    rng_state = torch.get_rng_state()
    runs = {
        seed: [dpc_knn_clusters(tokens, 3, generator=torch.Generator().manual_seed(seed)) for _ in range(2)]
        for seed in (0, 1)
    }
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched
    assert torch.equal(*runs[0]) and torch.equal(*runs[1])
    assert not torch.equal(runs[0][0], runs[1][0])
    # given draws (replayed from a recording) replace the generator's: the 3 noisiest tokens are the centres, in order
    noise = torch.rand(4, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cluster_ids = dpc_knn_clusters(tokens, 3, density_noise=noise, generator=torch.Generator().manual_seed(0))
    centres = noise.topk(3, dim=-1).indices
    assert torch.equal(cluster_ids.gather(1, centres), torch.arange(3).expand(4, 3))


def test_captions_shorter_than_the_clusters_stay_finite():
    torch.manual_seed(0)
    merge = HBIBlocks(32, merge_heads=4).text_merges[0]  # 16 tokens -> 4 clusters
    tokens = torch.randn(3, 16, 32, requires_grad=True)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :2] = True  # fewer real tokens than clusters: padded tokens fill the other centre slots
    mask[1] = True
    # mask[2]: no real token at all (a video that failed to decode)
    clustered = merge.ctm(tokens, mask, torch.Generator().manual_seed(0))
    assert set(clustered.cluster_ids[0, :2].tolist()) == {0, 1}  # each real token is its own cluster
    torch.testing.assert_close(clustered.merged[0, 2:], torch.zeros(2, 32))  # padded-only clusters: x' = 0
    torch.testing.assert_close(clustered.merged[2], torch.zeros(4, 32))
    out = merge.block(clustered)
    out.sum().backward()
    assert out.isfinite().all() and tokens.grad.isfinite().all()
    assert all(p.grad.isfinite().all() for p in merge.parameters())


def test_padded_tokens_do_not_change_entity_scores():
    torch.manual_seed(0)
    blocks = HBIBlocks(32)
    text, video = torch.randn(3, 8, 32), torch.randn(2, 6, 32)
    text_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 3 + [0] * 5], dtype=torch.bool)
    video_mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4], dtype=torch.bool)
    with torch.no_grad():
        sims = _level_similarity(blocks, 0, text, video, text_mask, video_mask)
        noisy_text = torch.where(text_mask[..., None], text, 100 * torch.randn_like(text))
        noisy_video = torch.where(video_mask[..., None], video, 100 * torch.randn_like(video))
        torch.testing.assert_close(_level_similarity(blocks, 0, noisy_text, noisy_video, text_mask, video_mask), sims)
        # the mask matters: without it, the padded tokens would score
        assert not torch.allclose(_level_similarity(blocks, 0, noisy_text, noisy_video), sims)


def test_tiled_similarity_equals_the_full_matrix():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(7, 5, 16), dim=-1)
    video = F.normalize(torch.randn(6, 4, 16), dim=-1)
    text_weights, video_weights = torch.rand(7, 5).softmax(-1), torch.rand(6, 4).softmax(-1)
    text_mask, video_mask = torch.rand(7, 5) > 0.3, torch.rand(6, 4) > 0.3
    full = wti_similarity(text, video, text_weights, video_weights, text_mask, video_mask)
    tiles = [
        [
            wti_similarity(
                text[a : a + 3],
                video[b : b + 4],
                text_weights[a : a + 3],
                video_weights[b : b + 4],
                text_mask[a : a + 3],
                video_mask[b : b + 4],
            )
            for b in range(0, 6, 4)
        ]
        for a in range(0, 7, 3)
    ]
    torch.testing.assert_close(torch.cat([torch.cat(row, dim=1) for row in tiles]), full)
    positives = positive_pair_maps(text[:6], video, text_mask[:6], video_mask)
    torch.testing.assert_close(
        positives, token_similarity_maps(text[:6], video, text_mask[:6], video_mask).diagonal().permute(2, 0, 1)
    )


def test_gradients_reach_every_trained_block_but_not_the_teacher_or_the_clustering():
    blocks = _blocks()
    text, text_mask, video, video_mask = _inputs("train")
    text.requires_grad_(True)
    total, _, _ = _training_losses(
        blocks, text, text_mask, video, video_mask, _recorded_noise("train"), _golden("logit_scale_log").exp()
    )
    total.backward()
    assert text.grad.abs().sum() > 0
    for name, param in blocks.named_parameters():
        if "_weights." in name and name.endswith(".2.bias"):
            continue  # shifts every logit of a softmax alike: its gradient is 0 up to rounding
        trained = not name.startswith("teacher.") and ".bn." not in name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == trained, name
    with_grad = text.detach().requires_grad_(True)
    assert not dpc_knn_clusters(with_grad, 4, mask=text_mask).requires_grad


def test_self_distillation_target_is_not_detached():
    entity, action, event = (torch.randn(4, 4, requires_grad=True) for _ in range(3))
    self_distillation(entity, action, event).backward()
    assert all(sims.grad.abs().sum() > 0 for sims in (entity, action, event))


def test_bi_transpose_choices():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    swapped = banzhaf_kl(student, teacher, "swap_last_two")
    torch.testing.assert_close(
        swapped, kl_mean(student, teacher) + kl_mean(student.transpose(1, 2), teacher.transpose(1, 2))
    )
    assert not torch.allclose(swapped, banzhaf_kl(student, teacher, "reverse_all"))
    with pytest.raises(ValueError, match="reverse_all, swap_last_two"):
        banzhaf_kl(student, teacher, "columns")
