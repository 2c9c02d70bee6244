"""head=drl where the golden fixture is silent: its switches (padded cells, mask value, weight-MLP widths),
CDCR 1's seeded generator and checkpoints, inputs without a real token or frame, refused combinations at
start-up, the recipes' model, the backbone end to end, a training run, and search (two stages or a vector index)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train
from test_cli import run_cli
from test_drl_golden import features, golden_head
from test_index_build import write_video
from test_padded_frames import captions, padded_clips
from test_resume import BATCHES_PER_EPOCH, killed_mid_run
from test_validation import assert_nothing_written, compose_with_empty_data_folder
from tvr.builders import build_module
from tvr.checkpoint import load_checkpoint_file
from tvr.errors import ConfigError
from tvr.lit_module import training_objective
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.convert import map_reference_head_keys
from tvr.models.heads import create_head
from tvr.models.heads.token_wise import TokenWiseInteraction
from tvr.models.losses import create_loss
from tvr.models.retriever import Retriever
from tvr.search.cli import run_index
from tvr.search.searcher import Searcher, SearchOptions
from tvr.search.two_stage import exhaustive_search
from tvr.train import train

D = 32
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# every interaction, each with a CDCR mode it takes (xti: none)
MODES = [("wti", 3), ("wti", 1), ("ti", 2), ("ti", 1), ("dp", 1), ("xti", 0)]


SMALL = {
    "temporal_layers": 1,
    "temporal_heads": 2,
    "init_from_clip": False,
    "xti_layers": 1,
    "xti_heads": 2,
    "xti_dropout": 0.0,
    "cdcr_alpha2": 0.5,  # the off-diagonal term too (0 in the recipes, Q1)
}


def small_head(interaction: str, cdcr: int, **options):
    torch.manual_seed(0)
    return create_head("drl", embed_dim=D, interaction=interaction, cdcr=cdcr, **{**SMALL, **options})


def batch(lengths_text, lengths_video, length: int = 7, frames: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.arange(length)[None] < torch.tensor(lengths_text)[:, None]
    video_mask = torch.arange(frames)[None] < torch.tensor(lengths_video)[:, None]
    tokens = torch.randn(len(lengths_text), length, D, generator=generator)
    text = TextFeatures(tokens[:, 0], tokens, text_mask)
    video = FrameFeatures(
        torch.randn(len(lengths_video), frames, D, generator=generator) * video_mask[..., None], video_mask
    )
    return text, video


# ------------------------------------------------------------------------------ switches (spec §1.10)
def test_excluding_padded_cells_changes_the_padded_argmax_and_nothing_else():
    """Q3 on the fixture's training batch: under zero_in_max, token [0, 3] picks a padded frame; exclude picks
    a real one and changes the CDCR loss, while real-only maxima (all other tokens) are unchanged."""
    text_features, video_features = features("train", torch.float64)
    terms = {}
    for rule in ("zero_in_max", "exclude"):
        head = golden_head("wti", 3, wti_padded_cells=rule).train()
        text, video = head.encode_text(text_features), head.encode_video(video_features)
        terms[rule] = head.cdcr_terms(text, video)
    real_frames = video_features.mask
    for rule, expected in (("zero_in_max", False), ("exclude", True)):
        picked_real = real_frames.gather(1, terms[rule].text_index)[text_features.mask]
        assert bool(picked_real.all()) is expected, rule
    assert not torch.isclose(terms["zero_in_max"].loss, terms["exclude"].loss)
    same_rows = real_frames.gather(1, terms["zero_in_max"].text_index) & text_features.mask
    assert torch.equal(terms["zero_in_max"].text_index[same_rows], terms["exclude"].text_index[same_rows])


def test_the_hbi_mask_value_gives_the_same_weights_while_every_item_has_a_real_token():
    """Q4: -inf (DRL) and -9e15 (HBI) agree on the fixture's scores."""
    scores = {}
    for value in (float("-inf"), -9e15):
        head = golden_head("wti", 3, wti_mask_value=value).eval()
        text_features, video_features = features("eval", torch.float64)
        scores[value] = head.similarity(head.encode_text(text_features), head.encode_video(video_features))
    torch.testing.assert_close(scores[float("-inf")], scores[-9e15], atol=0, rtol=0)


def test_the_mask_value_decides_the_weights_of_an_item_without_a_real_token():
    """-inf would give NaN there: the item gets zero weights; -9e15 (HBI) gives uniform weights over its padding."""
    logits, mask = torch.randn(2, 5), torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    for value, empty_item in ((float("-inf"), torch.zeros(5)), (-9e15, torch.full((5,), 0.2))):
        weights = TokenWiseInteraction(mask_value=value).weights(logits, mask)
        torch.testing.assert_close(weights[1], empty_item)
        torch.testing.assert_close(weights[0], torch.cat((logits[0, :2].softmax(dim=0), torch.zeros(3))))


@pytest.mark.parametrize("wti_arch, widths", [(1, [(1, D)]), (2, [(D, D), (1, D)]), (3, [(D, D), (D, D), (1, D)])])
def test_wti_arch_sets_the_weight_mlp_and_the_references_keys_load(wti_arch, widths):
    head = small_head("wti", 3, wti_arch=wti_arch)
    linear = [layer.weight.shape for layer in head.text_weight_fc if isinstance(layer, torch.nn.Linear)]
    assert [tuple(shape) for shape in linear] == widths
    # the reference's names: wti_arch 1 is a bare Linear (text_weight_fc.weight), the others Sequentials
    reference = {}
    for side in ("text", "video"):
        for index, shape in zip(range(0, 2 * len(widths), 2), widths):
            prefix = f"{side}_weight_fc." if wti_arch == 1 else f"{side}_weight_fc.{index}."
            reference[prefix + "weight"], reference[prefix + "bias"] = torch.randn(shape), torch.randn(shape[0])
    missing, unexpected = head.load_state_dict(map_reference_head_keys("drl", reference), strict=False)
    assert not unexpected and not any("weight_fc" in key for key in missing)
    first = "video_weight_fc.weight" if wti_arch == 1 else "video_weight_fc.0.weight"
    assert torch.equal(head.video_weight_fc[0].weight, reference[first])


# ------------------------------------------------------------------------------ CDCR 1's generator
def test_cdcr1_draws_from_the_heads_seeded_generator_which_checkpoints_carry():
    head = small_head("wti", 1, cdcr_seed=3).train()
    text, video = batch([7, 3, 5], [6, 2, 4])
    text_repr, video_repr = head.encode_text(text), head.encode_video(video)
    global_state = torch.random.get_rng_state()
    first = head.cdcr_terms(text_repr, video_repr).loss
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global RNG is not touched
    saved = head.state_dict()
    after_save = head.cdcr_terms(text_repr, video_repr).loss  # the next draws
    assert not torch.isclose(first, after_save)
    resumed = small_head("wti", 1, cdcr_seed=3).train()
    resumed.load_state_dict(saved)  # a resumed run continues the draws where the checkpoint was written
    torch.testing.assert_close(resumed.cdcr_terms(text_repr, video_repr).loss, after_save, rtol=0, atol=0)
    fresh, other = small_head("wti", 1, cdcr_seed=3), small_head("wti", 1, cdcr_seed=4)
    assert torch.equal(fresh.cdcr_draws(3)[0], small_head("wti", 1, cdcr_seed=3).cdcr_draws(3)[0])
    assert not torch.equal(fresh.cdcr_draws(5)[0], other.cdcr_draws(5)[0])


@pytest.mark.parametrize("interaction, cdcr", [mode for mode in MODES if mode[1] == 1])
def test_cdcr1_picks_only_real_positions(interaction, cdcr, monkeypatch):
    """``draw mod length``: a pick is always a real token/frame, so padding never changes CDCR 1."""
    head = small_head(interaction, cdcr).train()
    text, video = batch([7, 2, 5], [6, 1, 4])
    noisy_tokens, noisy_frames = text.tokens.clone(), video.frames.clone()
    noisy_tokens[~text.mask] = 50 * torch.randn(int((~text.mask).sum()), D)
    noisy_frames[~video.mask] = 50 * torch.randn(int((~video.mask).sum()), D)
    draws = (torch.tensor([9999, 1234, 17]), torch.tensor([5, 9998, 4321]))
    monkeypatch.setattr(head, "cdcr_draws", lambda count: draws)
    clean = head.cdcr_terms(head.encode_text(text), head.encode_video(video)).loss
    noisy = head.cdcr_terms(
        head.encode_text(TextFeatures(text.sentence, noisy_tokens, text.mask)),
        head.encode_video(FrameFeatures(noisy_frames, video.mask)),
    ).loss
    torch.testing.assert_close(clean, noisy)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("interaction, cdcr", MODES)
def test_a_text_without_a_real_token_and_a_video_without_a_readable_frame_score_finite(interaction, cdcr):
    head = small_head(interaction, cdcr)
    text, video = batch([7, 0, 3], [6, 0, 2])
    for tensor in (text.tokens, video.frames):
        tensor.requires_grad_(True)
    for training in (False, True):
        head.train(training)
        text_repr, video_repr = head.encode_text(text), head.encode_video(video)
        scores = head.similarity(text_repr, video_repr)
        assert torch.isfinite(scores).all(), (interaction, training)
    if interaction in ("wti", "ti"):  # they score 0 against everything (a miss), as an unreadable video elsewhere
        assert torch.equal(scores[1], torch.zeros(3, dtype=scores.dtype)) and not scores[:, 1].any()
    total, _, _ = training_objective(head, create_loss("infonce"), torch.tensor(4.6), text_repr, video_repr)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(text.tokens.grad).all() and torch.isfinite(video.frames.grad).all()


@pytest.mark.parametrize(
    "overrides, shown",
    [
        (["head.interaction=ti", "head.cdcr=3"], "head.cdcr: 3 weights CDCR by the WTI token weights"),
        (["head.interaction=xti", "head.cdcr=1"], "head.cdcr: 1 has no token features to decorrelate"),
        (["head.wti_arch=4"], "head.wti_arch"),
        (["head.interaction=mlp"], "head.interaction"),
        (["head.wti_padded_cells=drop"], "head.wti_padded_cells"),
    ],
)
def test_combinations_the_reference_cannot_run_are_refused_at_start_up(overrides, shown, tmp_path):
    cfg, data_dir, run_dir = compose_with_empty_data_folder(["head=drl", *overrides], tmp_path)
    with pytest.raises(ConfigError, match=shown.replace(".", r"\.")):
        train(cfg)
    assert_nothing_written(data_dir, run_dir)


# ------------------------------------------------------------------------------ recipes
def test_the_msrvtt_recipe_builds_the_papers_model(tmp_path):
    """Spec §1.3: WTI adds 2 x (512*512 + 512 + 512 + 1) parameters, seqTransf 4 CLIP text blocks and the frame PE."""
    cfg = compose_train(["experiment=drl_msrvtt"], tmp_path, tmp_path / "run")
    module = build_module(cfg)
    clip_text_block = 4 * 512 * 512 + 4 * 512 + 2 * 2 * 512 + 2 * 2048 * 512 + 2048 + 512
    assert sum(p.numel() for p in module.head.parameters()) == 526_338 + 77 * 512 + 4 * clip_text_block
    head = cfg.head
    assert (head.interaction, head.temporal, head.wti_arch, head.cdcr) == ("wti", "seqtransf", 2, 3)
    assert (head.cdcr_alpha1, head.cdcr_alpha2, head.cdcr_lambda) == (0.11, 0.0, 0.001)
    assert (cfg.optim.name, cfg.optim.head_lr, cfg.optim.backbone_lr, cfg.optim.weight_decay) == (
        "bertadam",
        1e-4,
        1e-7,
        0.2,
    )
    assert cfg.optim.t_total_epochs is None and cfg.trainer.max_epochs == 5 and cfg.data.train_augment == "none"
    assert (cfg.data.max_words, cfg.data.video.eval_sampler.max_frames) == (32, 12)
    script = compose_train(["experiment=drl_msrvtt_script"], tmp_path, tmp_path / "run2")
    assert script.head.cdcr_alpha1 == 0.14 and script.expected.t2v.R1 == 47.4 and cfg.expected.t2v.R1 == 47.6


def test_seqtransf_and_the_cross_encoder_start_from_clips_text_blocks():
    """Spec §1.3: the copy trick fills transformerClip, the frame PE and, for xti, the cross encoder."""
    options = {"interaction": "xti", "cdcr": 0, "temporal_layers": 2, "temporal_heads": 2, "xti_layers": 2}
    retriever = Retriever(
        {"model_name": "tvr-tiny"}, {"name": "drl", **options, "xti_heads": 2, "init_from_clip": True}
    )
    clip = retriever.backbone.clip
    for encoder in (retriever.head.temporal, retriever.head.cross.encoder):
        torch.testing.assert_close(encoder.position_embedding.weight, clip.positional_embedding, rtol=0, atol=0)
        for block, source in zip(encoder.blocks, clip.transformer.resblocks):
            torch.testing.assert_close(block.mlp.c_fc.weight, source.mlp.c_fc.weight, rtol=0, atol=0)


@pytest.mark.parametrize("interaction, titles", [("wti", 2), ("ti", 1), ("dp", 0), ("xti", 0)])
def test_token_wise_interactions_explain_their_first_pair(interaction, titles):
    head = small_head(interaction, 0).eval()
    text, video = batch([5, 7], [3, 6])
    text_repr, video_repr = head.encode_text(text), head.encode_video(video)
    maps = head.explain(text_repr, video_repr)
    assert len(maps) == titles
    if maps:
        similarity = maps["word x frame similarity"]
        assert similarity.shape == (7, 6) and not similarity[5:].any() and not similarity[:, 3:].any()
        unit_text, unit_frames = (
            torch.nn.functional.normalize(x, dim=-1)
            for x in (text.tokens[0], head.video_tokens(video.frames, video.mask)[0])
        )
        torch.testing.assert_close(similarity[:5, :3], (unit_text @ unit_frames.t())[:5, :3])


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("interaction, cdcr", MODES)
def test_backbone_and_head_score_a_padded_batch_as_each_item_alone(interaction, cdcr):
    """The tiny CLIP + drl on padded clips and captions of several lengths: a batch scores each (text, video)
    as that text and video encoded alone, and the training loss reaches CLIP."""
    torch.manual_seed(0)
    retriever = Retriever(
        {"model_name": "tvr-tiny"}, {"name": "drl", **SMALL, "interaction": interaction, "cdcr": cdcr}
    ).eval()
    frames, frame_mask = padded_clips()
    tokens = captions(3)
    with torch.no_grad():
        scores = retriever.score(retriever.encode_texts(tokens), retriever.encode_videos(frames, frame_mask))
        alone = torch.stack(
            [
                torch.cat(
                    [
                        retriever.score(
                            retriever.encode_texts(tokens[t : t + 1]),
                            retriever.encode_videos(frames[v : v + 1], frame_mask[v : v + 1]),
                        )[0]
                        for v in range(frames.shape[0])
                    ]
                )
                for t in range(tokens.shape[0])
            ]
        )
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    retriever.train()
    text_repr, video_repr = retriever.encode_texts(tokens[:3]), retriever.encode_videos(frames[:3], frame_mask[:3])
    total, _, _ = training_objective(
        retriever.head, create_loss("infonce"), retriever.backbone.logit_scale, text_repr, video_repr
    )
    total.backward()
    assert retriever.backbone.clip.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_cdcr1s_draws_exactly(data_dir, tmp_path):
    """Killed mid-epoch and resumed, a CDCR 1 run ends with the uninterrupted run's weights, generator state and
    metrics. CDCR weighs much here, so draws that restarted from the seed would change the weights."""
    args = ["experiment=synthetic_drl", "head.cdcr=1", "head.cdcr_lambda=1.0", "head.cdcr_alpha1=1.0"]
    args += ["trainer.max_epochs=2", "train.checkpoint_every_n_steps=1", *SMALL_OVERRIDES, *QUIET]
    reference = run_cli("tvr-train", args + [f"hydra.run.dir={tmp_path / 'reference'}"], data_dir, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "run"
    killed_mid_run(args, data_dir, tmp_path, run_dir, step=BATCHES_PER_EPOCH + 1)
    resumed = run_cli("tvr-train", args + ["ckpt_path=last", f"hydra.run.dir={run_dir}"], data_dir, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (run_dir, tmp_path / "reference")]
    assert metrics[0]["t2v"] == metrics[1]["t2v"] and metrics[0]["v2t"] == metrics[1]["v2t"]
    states = [
        load_checkpoint_file(folder / "checkpoints" / "last.ckpt")["state_dict"]
        for folder in (run_dir, tmp_path / "reference")
    ]
    generator = states[1].pop("head._extra_state")["cdcr_generator"]
    assert torch.equal(states[0].pop("head._extra_state")["cdcr_generator"], generator)
    assert not torch.equal(generator, small_head("wti", 1).cdcr_generator.get_state())  # the run drew
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


# ------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drl_videos")
    for number, colour in enumerate(
        [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (90, 90, 90), (0, 200, 200)]
    ):
        write_video(folder / f"clip{number}.mp4", colour, 1 + number % 2)
    return folder


QUERIES = ["a red square", "green light moving right", "a blue bar", "something grey", "yellow", "cyan water"]


@pytest.mark.parametrize("interaction, served_by", [("wti", "two stages"), ("dp", "inner-product search")])
def test_search_serves_pairwise_interactions_in_two_stages_and_dp_from_the_vector_index(
    interaction, served_by, videos, tmp_path
):
    index = tmp_path / "index"
    model = ["backbone=tiny", "head=drl", f"head.interaction={interaction}", "head.cdcr=1", "head.init_from_clip=false"]
    run_index([str(videos), *model, f"index={index}", "num_workers=0", "progress=false"])
    searcher = Searcher(index)
    assert searcher.retriever.summary_is_exact is (interaction == "dp")
    results = searcher.search(QUERIES, SearchOptions(top_k=3, rerank_k=6, check_recall=interaction != "dp"))
    assert served_by in results[0].note
    # every video proposed (two stages) or an exact index (dp): the head's own top 3, with its scores
    text_repr = searcher.retriever.encode_texts(searcher.tokens(QUERIES))
    scores, ids = exhaustive_search(searcher.retriever.head, text_repr, searcher.contents.representation, top_k=3)
    for row, result in enumerate(results):
        assert [searcher.contents.paths[int(i)] for i in ids[row]] == [hit.path for hit in result.hits]
        torch.testing.assert_close(
            torch.tensor([hit.score for hit in result.hits]), scores[row].float(), atol=1e-5, rtol=0
        )
