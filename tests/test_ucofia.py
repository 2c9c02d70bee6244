"""UCoFiA as a tvr head beyond the golden numbers: where its evaluation draws come from (seeded per item or per
batch, so batching, ranks and caching do not change the scores), SK-norm through the evaluation engine on
any head with levels (UCoFiA's and HBI's), start-up refusals, and a short run on the built-in set."""

from __future__ import annotations

import pytest
import torch

from conftest import SMALL_OVERRIDES, compose_train, recorded_scores
from tvr.config_checker import InvalidConfigError
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.evaluation.engine import EvalCollector, evaluate_encoded
from tvr.evaluation.options import encodes_every_level
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.draws import EvaluationDraws
from tvr.models.heads import create_head
from tvr.models.retriever import Retriever
from tvr.search.two_stage import exhaustive_search, two_stage_search
from tvr.search.vector_index import VectorIndex
from tvr.train import train
from tvr.validation import validate_train_config

D, F, PATCHES, L = 64, 4, 9, 8
TINY_OPTIONS = {"max_words": L, "max_frames": F, "temporal_layers": 1, "temporal_heads": 2, "init_from_clip": False}


def ucofia(**options):
    torch.manual_seed(0)
    head = create_head("ucofia", embed_dim=D, **{**TINY_OPTIONS, "topk_samples": 16, **options})
    head.bind_logit_scale(torch.nn.Parameter(torch.tensor(1.0)))
    return head.eval()


def videos(count: int = 5, seed: int = 0) -> FrameFeatures:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(count, F, 1 + PATCHES, D, generator=generator)
    mask = torch.ones(count, F, dtype=torch.bool)
    mask[1, 2:] = False
    return FrameFeatures(tokens[:, :, 0], mask, patches=tokens[:, :, 1:])


def rows(video: FrameFeatures, picked: list[int], draws: EvaluationDraws | None) -> FrameFeatures:
    return FrameFeatures(video.frames[picked], video.mask[picked], patches=video.patches[picked], draws=draws)


def encode_in_batches(head, video: FrameFeatures, batches: list[list[int]], seed: int = 0) -> torch.Tensor:
    """The selected tokens of every video, encoded batch by batch (items named by their index), in item order."""
    tokens = torch.empty(video.frames.shape[0], F * (1 + head.topk), D)
    for batch in batches:
        with torch.no_grad():
            tokens[batch] = head.encode_video(rows(video, batch, EvaluationDraws(seed, "videos", tuple(batch))))[
                "tokens"
            ]
    return tokens


def test_per_item_draws_do_not_depend_on_batching_order_or_process():
    head, video = ucofia(topk_noise="per_item_seeded"), videos()
    one_pass = encode_in_batches(head, video, [[0, 1, 2, 3, 4]])
    # two "ranks" with other batch sizes and another order (a DistributedSampler's interleaving)
    torch.testing.assert_close(encode_in_batches(head, video, [[4, 2], [0], [3, 1]]), one_pass, rtol=0, atol=0)
    assert not torch.equal(encode_in_batches(head, video, [[0, 1, 2, 3, 4]], seed=1), one_pass)  # the seed is read


def test_per_batch_draws_are_the_reference_rule_reproducible_for_the_same_batching():
    head, video = ucofia(topk_noise="per_batch"), videos()
    batches = [[0, 1], [2, 3], [4]]
    first = encode_in_batches(head, video, batches)
    torch.testing.assert_close(encode_in_batches(head, video, batches), first, rtol=0, atol=0)
    assert not torch.equal(encode_in_batches(head, video, [[0, 1, 2, 3, 4]]), first)  # depends on the batches


def test_without_noise_the_selection_is_the_hard_top_k():
    head, video = ucofia(topk_noise="none"), videos()
    tokens = encode_in_batches(head, video, [[0, 1, 2, 3, 4]])
    torch.testing.assert_close(encode_in_batches(head, video, [[3], [0, 1], [2, 4]], seed=7), tokens, rtol=0, atol=0)
    with torch.no_grad():
        scores = head.selector.scores(video.frames, video.patches)[:, 1:]
    best = scores.topk(head.topk, dim=-1).indices.sort(dim=-1).values  # the k best patches, in grid order
    expected = torch.gather(video.patches.flatten(0, 1), 1, best[..., None].expand(-1, -1, D))
    selected = tokens.reshape(-1, 1 + head.topk, D)[:, 1:]  # after each frame's CLS
    torch.testing.assert_close(selected, expected @ head.local_mat_weight1 if head.eval_w_l1 == "use" else expected)


def test_the_evaluation_seed_moves_the_patch_word_level_only():
    head, video = ucofia(topk_noise="per_item_seeded"), videos()
    generator = torch.Generator().manual_seed(3)
    text = head.encode_text(
        TextFeatures(
            torch.randn(3, D, generator=generator),
            torch.randn(3, L, D, generator=generator),
            torch.ones(3, L, dtype=torch.bool),
        )
    )
    levels = []
    for seed in (0, 1):
        with torch.no_grad():
            encoded = head.encode_video(rows(video, list(range(5)), EvaluationDraws(seed, "videos", tuple(range(5)))))
            levels.append(head.level_similarity(text, encoded))
    assert torch.equal(levels[0]["video_sentence"], levels[1]["video_sentence"])
    assert torch.equal(levels[0]["sentence_frame"], levels[1]["sentence_frame"])
    assert not torch.allclose(levels[0]["patch_word"], levels[1]["patch_word"])


def test_training_draws_come_from_the_heads_generator_which_checkpoints_carry():
    head, video = ucofia(), videos()
    head.train()
    state = head.state_dict()
    first = head.encode_video(video)["tokens"]
    head.load_state_dict(state)
    torch.testing.assert_close(head.encode_video(video)["tokens"], first, rtol=0, atol=0)


# ---------------------------------------------------------------------- SK-norm through the engine
def tiny_retriever(head: str, **options) -> Retriever:
    torch.manual_seed(0)
    return Retriever({"model_name": "tvr-tiny"}, {"name": head, **options}).eval()


def encoded_split(retriever, cfg: dict, texts: int = 6, videos: int = 5, bank: int = 4):
    """Random clips and captions through the real collector, with a caption bank and a video bank."""
    generator = torch.Generator().manual_seed(0)
    retriever.head.report_levels = encodes_every_level(cfg)
    collector = EvalCollector(seed=0)

    def tokens(count):
        ids = torch.randint(1, 400, (count, L), generator=generator)
        ids[:, 0], ids[:, L - 1] = 49406, 49407  # SOT ... EOT, full length
        return ids

    def clips(count):
        return torch.randn(count, F, 3, 32, 32, generator=generator), torch.ones(count, F, dtype=torch.bool)

    frames, mask = clips(videos)
    index = torch.arange(videos)
    collector.add(
        retriever,
        {
            "role": ["videos"],
            "frames": frames,
            "frame_mask": mask,
            "index": index,
            "unreadable": index < 0,
            "short": index < 0,
            "failed_videos": [],
        },
    )
    collector.add(
        retriever,
        {
            "role": ["texts"],
            "tokens": tokens(texts),
            "index": torch.arange(texts),
            "video_index": torch.arange(texts) % videos,
        },
    )
    collector.add(retriever, {"role": ["query_bank"], "tokens": tokens(bank), "index": torch.arange(bank)})
    frames, mask = clips(bank)
    collector.add(
        retriever, {"role": ["video_bank"], "frames": frames, "frame_mask": mask, "index": torch.arange(bank)}
    )
    return collector.gather()


@pytest.mark.parametrize(
    "head, options",
    [
        ("ucofia", {**TINY_OPTIONS, "topk_samples": 8, "topk_noise": "per_item_seeded"}),
        (
            "hbi",
            {"temporal_layers": 1, "temporal_heads": 2, "init_from_clip": False, "merge_heads": 2, "banzhaf_planes": 8},
        ),
    ],
)
def test_sknorm_normalises_every_level_of_any_head_with_levels(head, options):
    retriever = tiny_retriever(head, **options)
    cfg = {"rerank": "sknorm"}
    encoded = encoded_split(retriever, cfg)
    metrics = evaluate_encoded(retriever, encoded, cfg)
    reranked = metrics["reranked"]
    assert reranked["method"] == "sknorm" and reranked["bank_size"] == 4
    assert isinstance(reranked["t2v"], dict) and isinstance(reranked["v2t"], dict)
    assert set(encoded.query_bank) == set(encoded.texts) and set(encoded.video_bank) == set(encoded.videos)


# ---------------------------------------------------------------------- start-up refusals
def compose(tmp_path, *overrides):
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    return compose_train([*SMALL_OVERRIDES, "head=ucofia", *overrides], data_dir, tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, key, shown",
    [
        (["head=meanpool", "evaluation.rerank=sknorm"], "evaluation.rerank", "head 'meanpool' scores at one level"),
        (["evaluation.rerank=sknorm", "data.splits.train=null"], "evaluation.sknorm.bank_split", "no bank split"),
        (["head.topk=17"], "head.topk", "more than the 16 patch tokens per frame"),
        (["head.max_words=20"], "head.max_words", "data.max_words is 16"),
    ],
)
def test_bad_input_is_refused_at_start_up_naming_the_key(tmp_path, overrides, key, shown):
    with pytest.raises((InvalidConfigError, ConfigError)) as error:
        validate_train_config(compose(tmp_path, *overrides))
    line = next(line for line in str(error.value).splitlines() if line.lstrip("- ").startswith(f"{key}:"))
    assert shown in line


def test_ucofia_and_sknorm_pass_start_up_on_the_built_in_set(tmp_path):
    validate_train_config(compose(tmp_path, "evaluation.rerank=sknorm"))


# ---------------------------------------------------------------------- a short run, and tvr-eval over seeds
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def ucofia_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("ucofia_run")
    overrides = [*SMALL_OVERRIDES, *QUIET, "trainer.max_epochs=1", "head=ucofia", "head.topk_samples=16"]
    return run_dir, train(compose_train([*overrides, "evaluation.rerank=sknorm"], data_dir, run_dir))


def test_a_short_run_trains_and_reports_sknorm_rows_labelled(ucofia_run):
    run_dir, results = ucofia_run
    assert results["measured"]["rerank"] == "sknorm"
    reranked = results["reranked"]
    assert reranked["method"] == "sknorm" and isinstance(reranked["t2v"], dict) and isinstance(reranked["v2t"], dict)
    assert "transductive" in (run_dir / "results.md").read_text()


@pytest.mark.parametrize("noise", ["per_batch", "per_item_seeded"])
def test_tvr_eval_over_seeds_reports_mean_and_std_and_each_seed_is_reproducible(ucofia_run, data_dir, tmp_path, noise):
    run_dir, _ = ucofia_run
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"head.topk_noise={noise}", *QUIET]
    with recorded_scores() as calls:
        evaluated = evaluate(
            compose_train([*overrides, "evaluation.seeds=[5,6,5]"], data_dir, tmp_path / "eval", config_name="eval")
        )
    scores = [matrix for matrix, _ in calls]
    assert len(scores) == 3
    torch.testing.assert_close(scores[2], scores[0], rtol=0, atol=0)  # seed 5 twice: the same draws
    assert not torch.equal(scores[1], scores[0])  # seed 6: other draws
    spread = evaluated["over_seeds"]
    assert spread["seeds"] == [5, 6, 5] and len(spread["per_seed"]) == 3
    r1 = [run["t2v"]["R1"] for run in spread["per_seed"]]
    assert spread["t2v"]["R1"]["mean"] == pytest.approx(sum(r1) / 3)
    assert "| test (mean ± std, evaluation seeds 5, 6, 5) | t2v |" in (tmp_path / "eval" / "results.md").read_text()


# ---------------------------------------------------------------------- search
@torch.no_grad()
def test_two_stage_search_proposes_by_the_video_sentence_level_and_reranks_by_the_mean():
    retriever = tiny_retriever("ucofia", **{**TINY_OPTIONS, "topk_samples": 8, "topk_noise": "none"})
    generator = torch.Generator().manual_seed(1)
    frames, mask = torch.randn(12, F, 3, 32, 32, generator=generator), torch.ones(12, F, dtype=torch.bool)
    tokens = torch.randint(1, 400, (5, L), generator=generator)
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    video_repr, video_summary = retriever.encode_videos_with_summary(frames, mask)
    text_repr, text_summary = retriever.encode_texts_with_summary(tokens)
    levels = retriever.head.level_similarity(text_repr, video_repr)
    index = VectorIndex.build(video_summary)
    _, proposed = index.search(text_summary, 4)
    assert torch.equal(proposed, levels["video_sentence"].topk(4, dim=1).indices)  # stage one: that level's ranking
    scores, ids = two_stage_search(retriever.head, text_repr, text_summary, index, video_repr, rerank_k=12, top_k=3)
    reference = exhaustive_search(retriever.head, text_repr, video_repr, top_k=3)
    assert torch.equal(ids, reference[1])
    torch.testing.assert_close(scores, reference[0])


@pytest.mark.parametrize("samples", [3, 8])
def test_indicators_average_the_samples_one_hots(samples):
    """Each indicator row is a distribution over the patches in multiples of 1/n_s, and each sample picks k."""
    head, video = ucofia(topk_samples=samples), videos()
    noise = torch.randn(head.selector.noise_shape(5, F, PATCHES), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        indicators = head.selector.indicators(head.selector.scores(video.frames, video.patches), noise)
    torch.testing.assert_close(indicators.sum(dim=-1), torch.ones(5 * F, head.topk))
    torch.testing.assert_close(indicators * samples, (indicators * samples).round())
