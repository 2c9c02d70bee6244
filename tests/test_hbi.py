"""HBI as a head: multi-level scores through the module's seam, golden parity of the whole head (eval scores,
every level, the training loss as the module composes it), the estimator stage and its file, explanation."""

import importlib.util

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from conftest import FIXTURES, SMALL_OVERRIDES, compose_train
from tvr.builders import backbone_preprocessing, build_datamodule, build_module
from tvr.checkpoint import atomic_torch_save, load_checkpoint_file
from tvr.errors import ConfigError, UserInputError
from tvr.evaluate import evaluate
from tvr.explain import explain_pair
from tvr.models.backbone import TextFeatures
from tvr.models.convert import map_reference_head_keys
from tvr.models.heads import create_head
from tvr.models.heads.base import LossContext, ScoreLevels
from tvr.models.heads.hbi import LEVELS, banzhaf_interaction, pair_cell_mask, token_similarity_maps
from tvr.models.losses import create_loss
from tvr.models.retriever import Retriever
from tvr.train import train
from tvr.validation import validate_train_config

GOLDEN = torch.load(FIXTURES / "golden" / "hbi_golden.pt", weights_only=True)
_spec = importlib.util.spec_from_file_location("explain_tool", FIXTURES.parents[1] / "tools" / "explain.py")
explain_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(explain_tool)
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def golden_head():
    """The fixture's HBI (width 64, 8 merge heads) in float64, its reference-named weights loaded through tvr's mapping."""
    head = create_head("hbi", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False)
    reference = {key: value for key, value in GOLDEN["state_dict"].items() if not key.startswith("clip.")}
    missing, unexpected = head.load_state_dict(map_reference_head_keys("hbi", reference), strict=False)
    # seqTransf is not in this fixture; the noise generator state is tvr's own
    assert not unexpected and all(key.startswith("temporal.") or key == "_extra_state" for key in missing)
    return head.double()


def encode(head, prefix):
    text = head.encode_tokens(GOLDEN[f"{prefix}_text_feat"].double(), GOLDEN[f"{prefix}_text_mask"], "text")
    video = head.encode_tokens(GOLDEN[f"{prefix}_video_feat"].double(), GOLDEN[f"{prefix}_video_mask"], "video")
    return text, video


def test_evaluation_ranks_on_the_entity_level_and_computes_only_it():
    head = golden_head().eval()
    with torch.no_grad():
        text, video = encode(head, "eval")
        scores = head.similarity(text, video)
    torch.testing.assert_close(scores, GOLDEN["eval_sim"], atol=1e-9, rtol=0)
    assert "tokens1" not in text and "tokens2" not in video  # level weights [1, 0, 0]: no merging at evaluation


def test_every_level_is_reported_on_request():
    head = golden_head().eval()
    head.report_levels = True
    with torch.no_grad():
        levels = head.level_similarity(*encode(head, "eval"))
    assert list(levels) == list(LEVELS)
    for name in LEVELS:
        torch.testing.assert_close(levels[name], GOLDEN[f"eval_sim_{name}"], atol=1e-9, rtol=0)


def test_training_loss_as_the_module_composes_it():
    """Contrastive loss on each trained level (the module's rule) + the head's Banzhaf and self-distillation terms."""
    head = golden_head().train()
    text, video = encode(head, "train")
    scores = head.similarity(text, video)
    assert isinstance(scores, ScoreLevels) and head.trained_levels == LEVELS
    loss = create_loss("infonce")
    scale = GOLDEN["logit_scale_log"].double().exp()
    contrastive = {name: loss(scale * scores.levels[name]) for name in head.trained_levels}
    terms = head.extra_losses(text, video, LossContext(GOLDEN["logit_scale_log"], loss, scores.levels))
    total = sum(contrastive.values()) + sum(terms.values())
    torch.testing.assert_close(total, GOLDEN["train_loss_total"], atol=1e-9, rtol=0)
    torch.testing.assert_close(
        contrastive["action"] + terms["banzhaf_action"], GOLDEN["train_loss_action"], atol=1e-9, rtol=0
    )
    total.backward()
    assert all(p.grad is None for p in head.blocks.teacher.parameters())  # the estimator stays frozen
    assert (
        head.blocks.students[2].cnn2.weight.grad.abs().sum() > 0
        and head.blocks.text_merges[1].ctm.score.weight.grad is not None
    )


def test_captions_shorter_than_the_clusters_stay_finite():
    """A 2-token caption at L=16 has fewer real tokens than the action level's 4 clusters (spec §3.4)."""
    torch.manual_seed(0)
    head = create_head("hbi", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False).train()
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :2], mask[1, :3], mask[2, :16] = True, True, True
    text = head.encode_text(TextFeatures(torch.randn(3, 64), torch.randn(3, 16, 64), mask))
    video = head.encode_tokens(torch.randn(3, 8, 64), torch.ones(3, 8), "video")
    scores = head.similarity(text, video)
    terms = head.extra_losses(text, video, LossContext(torch.tensor(4.6), create_loss("infonce"), scores.levels))
    total = sum(create_loss("infonce")(level * 100) for level in scores.levels.values()) + sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_dpc_noise_is_drawn_from_the_heads_seeded_generator_which_checkpoints_carry():
    head = create_head(
        "hbi", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False, noise_seed=3
    ).train()
    fresh, tokens = head.noise.get_state(), torch.randn(2, 16, 64)
    global_state = torch.random.get_rng_state()
    head.encode_tokens(tokens, torch.ones(2, 16), "text")
    assert torch.equal(torch.random.get_rng_state(), global_state) and not torch.equal(head.noise.get_state(), fresh)
    restored = create_head("hbi", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False, noise_seed=3)
    restored.load_state_dict(head.state_dict())  # a resumed run continues the noise where it stopped
    assert torch.equal(restored.noise.get_state(), head.noise.get_state())
    other = create_head("hbi", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False, noise_seed=4)
    assert not torch.equal(other.noise.get_state(), fresh)


# ------------------------------------------------------------------------------ the two stages, end to end
@pytest.fixture(scope="module")
def estimator_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("estimator")
    cfg = compose_train(
        ["experiment=hbi_estimator_synthetic", "trainer.max_epochs=1", "head.num_samples=2"] + SMALL_OVERRIDES + QUIET,
        data_dir,
        run_dir,
    )
    results = train(cfg)
    return run_dir, results, cfg


def run_start(cfg):
    """The data and the module as ``train(cfg)`` starts them (same seed, same order): the run's initial weights."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data, cfg.evaluation, preprocessing=backbone_preprocessing(cfg.backbone))
    return datamodule, build_module(cfg)


def estimator_problems(module, batches, num_samples: int = 16) -> list[tuple[torch.Tensor, ...]]:
    """(entity-level maps, Monte-Carlo Banzhaf targets, real cells) of each batch: what the estimator learns to predict."""
    generator, problems = torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for batch in batches:
            text, video = (
                module.encode_texts(batch["tokens"]),
                module.encode_videos(batch["frames"], batch["frame_mask"]),
            )
            maps = module.head.positive_pair_maps(text, video, 0)
            target = banzhaf_interaction(
                maps, text["mask"], video["mask"], text["weights0"], video["weights0"], num_samples, generator
            )
            problems.append((maps, target, pair_cell_mask(text["mask"], video["mask"])))
    return problems


def estimator_mse(estimator, problems) -> float:
    with torch.no_grad():
        return float(
            torch.stack(
                [F.mse_loss(estimator(maps[:, None])[:, 0] * cells, target) for maps, target, cells in problems]
            ).mean()
        )


def test_the_estimator_stage_trains_the_estimator_alone_and_writes_it(estimator_run):
    run_dir, results, cfg = estimator_run
    estimator = run_dir / "estimator.pt"
    assert results["artifacts"] == [str(estimator)]
    saved = load_checkpoint_file(estimator)
    assert saved["format"] == "tvr-hbi-estimator" and set(saved["state_dict"]) >= {
        "Q",
        "K",
        "V",
        "cnn1.weight",
        "cnn2.weight",
    }
    datamodule, module = run_start(cfg)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("head.blocks.teacher.") for name in trainable)
    # the run started from these weights (everything it froze is still exactly them), and moved every estimator weight
    last = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(
        torch.equal(last[name], value)
        for name, value in module.state_dict().items()
        if torch.is_tensor(value) and name not in trainable
    )
    initial = module.head.blocks.teacher.state_dict()
    moved = {key for key, value in saved["state_dict"].items() if not torch.equal(value, initial[key])}
    assert moved == {name.removeprefix("head.blocks.teacher.") for name in trainable}
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())[
        :2
    ]  # 16 pairs: enough to tell, and the Monte-Carlo targets are costly
    problems = estimator_problems(module, batches)
    before = estimator_mse(module.head.blocks.teacher, problems)
    module.head.blocks.teacher.load_state_dict(saved["state_dict"])
    after = estimator_mse(module.head.blocks.teacher, problems)
    assert after < 0.9 * before  # it learned to predict the Monte-Carlo targets


@pytest.fixture(scope="module")
def hbi_run(estimator_run, data_dir, tmp_path_factory):
    """The second command: HBI with the estimator as its teacher (a copy, deleted once training is done)."""
    folder = tmp_path_factory.mktemp("hbi")
    estimator = folder / "estimator.pt"
    estimator.write_bytes((estimator_run[0] / "estimator.pt").read_bytes())
    run_dir = folder / "run"
    cfg = compose_train(
        ["head=hbi", f"head.estimator_ckpt={estimator}", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]
        + SMALL_OVERRIDES
        + QUIET,
        data_dir,
        run_dir,
    )
    results = train(cfg)
    teacher = load_checkpoint_file(estimator)["state_dict"]
    estimator.unlink()  # evaluation needs only the checkpoint
    return run_dir, results, teacher


def test_hbi_trains_with_the_estimator_as_frozen_teacher_and_evaluates_without_its_file(hbi_run, data_dir, tmp_path):
    run_dir, results, teacher = hbi_run
    state = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in teacher.items():
        assert torch.equal(state[f"head.blocks.teacher.{key}"], value), key  # stored, and never trained
    columns = next(run_dir.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    expected = {f"train/contrastive_{level}" for level in LEVELS} | {f"train/banzhaf_{level}" for level in LEVELS}
    assert expected | {"train/self_distillation"} <= set(
        columns
    )  # the module's loss per trained level, the head's terms
    assert results["run"]["head"] == "hbi"
    eval_cfg = compose_train(
        [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "evaluation.report_levels=true"] + QUIET,
        data_dir,
        tmp_path / "eval",
        config_name="eval",
    )
    evaluated = evaluate(eval_cfg)
    assert set(evaluated["levels"]) == set(LEVELS)
    assert evaluated["levels"]["entity"]["t2v"] == pytest.approx(
        evaluated["t2v"]
    )  # ranking = entity (weights [1, 0, 0])
    assert "| test (level: event) | t2v |" in (tmp_path / "eval" / "results.md").read_text()


def test_explain_draws_the_word_by_frame_interaction(hbi_run, data_dir, tmp_path, capsys):
    run_dir = hbi_run[0]
    video = sorted((data_dir / "synthetic" / "videos").glob("*.mp4"))[0]
    caption = "a red square moves left"
    out = explain_tool.main(
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "--text",
            caption,
            "--video",
            str(video),
            "--out",
            str(tmp_path / "explain.png"),
        ]
    )
    assert (
        out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "tokens x 6 frames" in capsys.readouterr().out
    )  # 6 s at 1 fps
    retriever = Retriever.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    head, encoded = retriever.head, []
    explain = head.explain
    head.explain = lambda text_repr, video_repr: (
        encoded.append((text_repr, video_repr)) or explain(text_repr, video_repr)
    )
    explanation = explain_pair(retriever, caption, video)
    assert explanation.words[0] == "<sot>" and explanation.words[-1] == "<eot>" and explanation.thumbnails.shape[0] == 6
    assert set(explanation.maps) == {"word x frame similarity", "Banzhaf interaction (estimator)"}
    # the head's own entity-level word x frame map of the pair (words down, frames across), cut to the real tokens,
    # and what its estimator makes of it
    ((text_repr, video_repr),) = encoded
    words, frames = len(explanation.words), 6
    assert text_repr["mask"][0].sum() == words and video_repr["mask"][0].sum() == frames
    cosines = token_similarity_maps(text_repr["tokens0"], video_repr["tokens0"], text_repr["mask"], video_repr["mask"])[
        0, 0
    ]
    interaction = (
        head.blocks.teacher(cosines[None, None]).squeeze() * pair_cell_mask(text_repr["mask"], video_repr["mask"])[0]
    )
    torch.testing.assert_close(torch.from_numpy(explanation.maps["word x frame similarity"]), cosines[:words, :frames])
    torch.testing.assert_close(
        torch.from_numpy(explanation.maps["Banzhaf interaction (estimator)"]), interaction[:words, :frames]
    )
    assert cosines[:words, :frames].std() > 0 and interaction[:words, :frames].std() > 0
    with pytest.raises(UserInputError, match="has no word x frame interaction"):
        explain_pair(Retriever({"model_name": "tvr-tiny"}, {"name": "meanpool"}), caption, video)


def test_a_missing_or_foreign_estimator_fails_at_start_up(data_dir, tmp_path):
    cfg = compose_train(["head=hbi"], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"head.estimator_ckpt: is not set.*experiment=hbi_estimator_<dataset>"):
        validate_train_config(cfg)
    cfg = compose_train(["head=hbi", f"head.estimator_ckpt={tmp_path / 'none.pt'}"], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"head.estimator_ckpt: file not found"):
        validate_train_config(cfg)
    atomic_torch_save({"state_dict": {"Q": torch.zeros(32, 32)}}, tmp_path / "other.pt")
    cfg = compose_train(["head=hbi", f"head.estimator_ckpt={tmp_path / 'other.pt'}"], data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"is not a Banzhaf estimator of this head"):
        validate_train_config(cfg)
