"""DiffusionRet as a head: the reference's numbers through tvr's own head, evaluation seam and loss composition
(diffusionret_golden), the two stages as a user runs them (stage 2 over stage 1's checkpoint, frozen, its file
alone evaluated, seeds), and bad input refused at start-up. The numerical modules on their own:
tests/test_diffusionret_golden.py."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import FIXTURES, SMALL_OVERRIDES, compose_train
from test_diffusionret_golden import DDIM_ATOL
from tvr.atomic import atomic_torch_save
from tvr.checkpoint import load_checkpoint_file
from tvr.config import to_plain
from tvr.conversion import convert_checkpoint
from tvr.errors import ConfigError
from tvr.evaluate import evaluate
from tvr.evaluation.engine import EncodedSplit, evaluate_encoded, second_stage_pair
from tvr.evaluation.metrics import retrieval_metrics
from tvr.lit_module import training_objective
from tvr.models.backbone import CLIPBackbone
from tvr.models.convert import map_reference_head_keys
from tvr.models.heads import create_head
from tvr.models.heads.temporal import prefixed_renames
from tvr.models.losses import create_loss
from tvr.models.retriever import Retriever
from tvr.train import train
from tvr.validation import validate_train_config

GOLDEN = torch.load(FIXTURES / "golden" / "diffusionret_golden.pt", weights_only=True)
INFO = json.loads((FIXTURES / "golden" / "diffusionret_golden.json").read_text())
CONFIG = INFO["config"]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def golden_head(dtype=torch.float64, steps: int | None = None):
    """The fixture's model as tvr's head: stage 2, the fixture's sizes, reference-named weights mapped by tvr."""
    width = GOLDEN["eval_text_feat"].shape[-1]
    k = GOLDEN["eval_t2v_cand"].shape[1]
    head = create_head(
        "diffusionret",
        embed_dim=width,
        stage="generation",
        temporal_layers=1,
        temporal_heads=1,
        init_from_clip=False,
        diffusion_steps=steps or CONFIG["diffusion_steps"],
        num_candidates=CONFIG["num"],
        d_temp=CONFIG["d_temp"],
        negative_target=float(CONFIG["neg"]),
        t2v_k=k,
        v2t_k=k,
        rerank_chunk=CONFIG["t2v_num"],
        t2v_alpha=CONFIG["t2v_alpha"],
        v2t_alpha=CONFIG["v2t_alpha"],
        t2v_temp=CONFIG["t2v_temp"],
        v2t_temp=CONFIG["v2t_temp"],
    )
    reference = {key: value for key, value in GOLDEN["state_dict"].items() if not key.startswith("clip.")}
    missing, unexpected = head.load_state_dict(map_reference_head_keys("diffusionret", reference), strict=False)
    # seqTransf is not in this fixture (its inputs are seqTransf's outputs); the draw generator is tvr's own
    assert not unexpected and all(key.startswith("temporal.") or key == "_extra_state" for key in missing)
    for generator in (head.t2v_generator, head.v2t_generator):  # the fixture's float32 sinusoids: weights too
        generator.timestep_table[: GOLDEN["pe_rows"].shape[0]] = GOLDEN["pe_rows"]
    return head.to(dtype)


def representations(head, prefix: str, dtype=torch.float64):
    """The fixture's token/EOT features and seqTransf frames as the head's representations."""
    video_frames = GOLDEN[f"{prefix}_video_feat"].to(dtype)
    text = {
        **head.encode_tokens(GOLDEN[f"{prefix}_text_feat"].to(dtype), GOLDEN[f"{prefix}_text_mask"], "text"),
        "eot": GOLDEN[f"{prefix}_cls"].to(dtype),
    }
    video = {**head.encode_tokens(video_frames, GOLDEN[f"{prefix}_video_mask"], "video"), "frames": video_frames}
    return text, video


def replay_start_noise(head, prefix: str) -> None:
    """Inject the reference's recorded x_T (per chunk, concatenated in query order) instead of drawing."""
    head.start_noise = lambda direction, query_index, k, seed: GOLDEN[f"{prefix}_{direction}_xT"][query_index]


@pytest.mark.parametrize("prefix, steps", [("eval", None), ("eval_few", 5)])
def test_evaluation_through_the_seam_reproduces_both_reference_matrices(prefix, steps):
    head = golden_head(steps=steps).eval()
    replay_start_noise(head, prefix)
    with torch.no_grad():
        text, video = representations(head, "eval")
        scores = head.similarity(text, video)
        torch.testing.assert_close(scores, GOLDEN["eval_sim_stage1"], atol=1e-10, rtol=0)
        nothing = torch.zeros(scores.shape[1], dtype=torch.bool)  # every video readable, none short
        encoded = EncodedSplit(text, video, np.zeros(len(scores), dtype=np.int64), nothing, nothing)
        t2v, v2t = second_stage_pair(SimpleNamespace(head=head), scores, encoded, seed=0)
    # the fused matrices' tolerance: the reference's float32 DDIM coefficients (test_diffusionret_golden.DDIM_ATOL)
    torch.testing.assert_close(t2v, GOLDEN[f"{prefix}_t2v_final"], atol=DDIM_ATOL["final"], rtol=0)
    torch.testing.assert_close(v2t, GOLDEN[f"{prefix}_v2t_final"], atol=DDIM_ATOL["final"], rtol=0)


def test_float32_evaluation_is_within_the_references_own_float32_gap():
    head = golden_head(torch.float32).eval()
    replay_start_noise(head, "eval")
    with torch.no_grad():
        text, video = representations(head, "eval", torch.float32)
        scores = head.similarity(text, video)
        nothing = torch.zeros(scores.shape[1], dtype=torch.bool)  # every video readable, none short
        encoded = EncodedSplit(text, video, np.zeros(len(scores), dtype=np.int64), nothing, nothing)
        t2v, v2t = second_stage_pair(SimpleNamespace(head=head), scores, encoded, seed=0)
    gap = INFO["fp32_vs_fp64_max_abs_diff"]
    torch.testing.assert_close(t2v.double(), GOLDEN["eval_t2v_final"], atol=10 * gap["eval_t2v_final"], rtol=0)
    torch.testing.assert_close(v2t.double(), GOLDEN["eval_v2t_final"], atol=10 * gap["eval_v2t_final"], rtol=0)


def test_the_reported_numbers_rank_each_direction_on_its_reference_matrix():
    head = golden_head().eval()
    replay_start_noise(head, "eval")
    text, video = representations(head, "eval")
    texts, videos = GOLDEN["eval_sim_stage1"].shape
    text_to_video = np.arange(texts) % videos  # any labelling: both sides rank with it
    nothing = torch.zeros(videos, dtype=torch.bool)  # every video readable, none short
    encoded = EncodedSplit(text, video, text_to_video, nothing, nothing)
    metrics = evaluate_encoded(SimpleNamespace(head=head), encoded, {})
    assert metrics["t2v"] == retrieval_metrics(GOLDEN["eval_t2v_final"], text_to_video)["t2v"]
    assert metrics["v2t"] == retrieval_metrics(GOLDEN["eval_v2t_final"].t(), text_to_video)["v2t"]
    assert metrics["first_stage"] == retrieval_metrics(GOLDEN["eval_sim_stage1"], text_to_video)
    assert metrics["second_stage"]["method"] == "diffusionret" and metrics["second_stage"]["seed"] == 42


def test_one_training_step_through_the_modules_loss_composition_reproduces_losses_and_gradients():
    head = golden_head().train()
    draws = (GOLDEN["train_t"], GOLDEN["train_noise_t2v"], GOLDEN["train_noise_v2t"])
    head.training_draws = lambda batch: draws
    text, video = representations(head, "train")
    logit_scale = GOLDEN["logit_scale_log"].double()
    total, contrastive, terms = training_objective(
        head, create_loss("infonce"), logit_scale, text, video, local_video_ids=GOLDEN["train_idx"]
    )
    torch.testing.assert_close(contrastive, GOLDEN["train_loss_disc"], atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["generation_t2v"], GOLDEN["train_loss_gen_t2v"], atol=1e-9, rtol=0)
    torch.testing.assert_close(terms["generation_v2t"], GOLDEN["train_loss_gen_v2t"], atol=1e-9, rtol=0)
    torch.testing.assert_close(total, GOLDEN["train_loss"], atol=1e-9, rtol=0)  # L1 (no gradient) + L_gen
    total.backward()
    for side, generator in (("diffusion_model", head.t2v_generator), ("diffusion_model_v", head.v2t_generator)):
        for name, param in generator.named_parameters():
            expected = GOLDEN[f"train_grad.{side}.{name}"]
            torch.testing.assert_close(param.grad, expected, atol=1e-9, rtol=0, msg=f"{side}.{name}")
    frozen = [name for name, param in head.named_parameters() if "generator" not in name]
    assert frozen and all(not head.get_parameter(name).requires_grad for name in frozen)


def test_stage_1_has_no_generation_loss_and_leaves_the_generators_out_of_training():
    head = create_head("diffusionret", embed_dim=64, temporal_layers=1, temporal_heads=1, init_from_clip=False).double()
    text, video = representations(head, "train")
    _, _, terms = training_objective(head, create_loss("infonce"), torch.tensor(4.6, dtype=torch.float64), text, video)
    assert terms == {}
    trainable = {name.split(".")[0] for name, param in head.named_parameters() if param.requires_grad}
    assert trainable == {"temporal", "text_weight_fc", "video_weight_fc"}
    assert not head.reranks_queries


def test_the_start_noise_follows_the_switch_and_seed():
    head = create_head("diffusionret", embed_dim=8, temporal_layers=1, temporal_heads=1, rerank_chunk=2)
    queries = torch.arange(5)
    stream = head.start_noise("t2v", queries, 3, seed=42)
    torch.testing.assert_close(head.start_noise("t2v", queries[3:], 3, seed=42), stream[3:])  # any process's share
    assert not torch.equal(head.start_noise("t2v", queries, 3, seed=43), stream)
    assert not torch.equal(head.start_noise("v2t", queries, 3, seed=42), stream)
    head.infer_xT = "fixed_per_query"
    fixed = head.start_noise("t2v", queries, 3, seed=42)
    head.rerank_chunk = 4  # another chunking: the same noise per query
    torch.testing.assert_close(head.start_noise("t2v", queries, 3, seed=42), fixed)
    head.infer_xT = "zeros"
    assert not head.start_noise("t2v", queries, 3, seed=42).any()


# ---------------------------------------------------------------------- the two stages as a user runs them
@pytest.fixture(scope="module")
def stage_runs(data_dir, tmp_path_factory):
    """Both commands of the built-in recipes, shortened: stage 1, then stage 2 over its last checkpoint."""
    folder = tmp_path_factory.mktemp("diffusionret")
    common = ["trainer.max_epochs=1", "trainer.log_every_n_steps=1"] + SMALL_OVERRIDES + QUIET
    stage1_dir = folder / "stage1"
    train(compose_train(["experiment=synthetic_diffusionret_stage1"] + common, data_dir, stage1_dir))
    stage1 = stage1_dir / "checkpoints" / "last.ckpt"
    stage2_dir = folder / "stage2"
    results = train(
        compose_train(
            ["experiment=synthetic_diffusionret_gen", f"head.stage1_ckpt={stage1}", "head.num_candidates=7"] + common,
            data_dir,
            stage2_dir,
        )
    )
    return stage1, stage2_dir, results


@pytest.mark.slow
def test_stage_2_freezes_stage_1_trains_the_generators_and_reports_both_stages(stage_runs):
    stage1, stage2_dir, results = stage_runs
    before = load_checkpoint_file(stage1)["state_dict"]
    after = load_checkpoint_file(stage2_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in before.items():
        if key.startswith(("backbone.", "head.temporal.", "head.text_weight_fc.", "head.video_weight_fc.")):
            assert torch.equal(after[key], value), key  # stage 1's weights, loaded and never trained
    moved = {key for key, value in after.items() if "generator" in key and not torch.equal(value, before[key])}
    assert moved and all(key.startswith(("head.t2v_generator.", "head.v2t_generator.")) for key in moved)
    assert set(results["first_stage"]) >= {"t2v", "v2t"} and results["second_stage"]["method"] == "diffusionret"
    assert results["measured"]["second_stage"]["t2v_k"] == 32
    assert "first stage alone" in (stage2_dir / "results.md").read_text()
    columns = next(stage2_dir.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/generation_t2v", "train/generation_v2t", "train/contrastive_loss"} <= set(columns)


@pytest.mark.slow
def test_tvr_eval_needs_only_the_stage_2_file_and_reports_the_spread_over_seeds(stage_runs, data_dir, tmp_path):
    stage1, stage2_dir, _ = stage_runs
    moved = stage1.with_suffix(".moved")
    stage1.rename(moved)  # evaluation must not read stage 1's file
    try:
        cfg = compose_train(
            [f"ckpt_path={stage2_dir / 'checkpoints' / 'last.ckpt'}", "evaluation.seeds=[0,1]"] + QUIET,
            data_dir,
            tmp_path / "eval",
            config_name="eval",
        )
        evaluated = evaluate(cfg)
    finally:
        moved.rename(stage1)
    assert evaluated["over_seeds"]["seeds"] == [0, 1] and len(evaluated["over_seeds"]["per_seed"]) == 2
    assert evaluated["second_stage"]["seed"] == 42  # the first seed's: infer_seed + evaluation seed 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["head.stage=generation"], r"head.stage1_ckpt: is not set.*experiment=diffusionret_stage1_<dataset>"),
        (["head.stage=generation", "head.stage1_ckpt=/nowhere/best.ckpt"], r"head.stage1_ckpt: file not found"),
        (["head.stage1_ckpt=/nowhere/best.ckpt"], r"head.stage1_ckpt: is set, but head.stage is discrimination"),
    ],
)
def test_stage_2_without_a_stage_1_checkpoint_stops_at_start_up_saying_how_to_make_one(
    overrides, message, data_dir, tmp_path
):
    cfg = compose_train(["experiment=synthetic_diffusionret_stage1"] + overrides, data_dir, tmp_path)
    with pytest.raises(ConfigError, match=message):
        validate_train_config(cfg)


@pytest.mark.slow
def test_a_stage_1_checkpoint_of_another_head_or_width_is_refused(stage_runs, data_dir, tmp_path):
    stage1, _, _ = stage_runs
    other_width = ["experiment=synthetic_diffusionret_gen", f"head.stage1_ckpt={stage1}", "head.temporal_layers=1"]
    with pytest.raises(ConfigError, match=r"head.stage1_ckpt: .* does not fit this head"):
        validate_train_config(compose_train(other_width, data_dir, tmp_path))


def test_a_batch_smaller_than_the_candidates_is_refused_naming_both(data_dir, tmp_path, stage1_stub):
    overrides = ["experiment=synthetic_diffusionret_gen", f"head.stage1_ckpt={stage1_stub}", "data.batch_size=16"]
    with pytest.raises(ConfigError, match=r"head.num_candidates: is 63.*global training batch.*16.*data.batch_size=16"):
        validate_train_config(compose_train(overrides, data_dir, tmp_path))


@pytest.fixture
def stage1_stub(data_dir, tmp_path):
    """A stage-1 checkpoint as tvr-train writes one (its weights untrained), without training."""
    cfg = compose_train(["experiment=synthetic_diffusionret_stage1"] + SMALL_OVERRIDES, data_dir, tmp_path / "stub")
    retriever = Retriever(to_plain(cfg.backbone), to_plain(cfg.head))
    path = tmp_path / "stage1.ckpt"
    hyper_parameters = {key: to_plain(cfg[key]) for key in ("backbone", "head", "loss", "optim", "evaluation", "train")}
    atomic_torch_save({"hyper_parameters": hyper_parameters, "state_dict": retriever.state_dict()}, path)
    return path


def test_a_stage_1_checkpoint_of_another_head_is_refused(data_dir, tmp_path, stage1_stub):
    checkpoint = load_checkpoint_file(stage1_stub)
    checkpoint["hyper_parameters"]["head"]["name"] = "drl"
    atomic_torch_save(checkpoint, stage1_stub)
    overrides = ["experiment=synthetic_diffusionret_gen", f"head.stage1_ckpt={stage1_stub}"]
    with pytest.raises(ConfigError, match=r"head.stage1_ckpt: .* is a checkpoint of head 'drl', not of diffusionret"):
        validate_train_config(compose_train(overrides, data_dir, tmp_path))


def diffusionret_release(path) -> dict:
    """A released stage-2 ``best.pth`` as the reference saves it (spec §9): CLIP in fp16 under ``clip.``, seqTransf
    under its reference names, the WTI MLPs and both generators with their two ``pe`` buffers each."""
    torch.manual_seed(5)
    clip = {f"clip.{key}": value.half() for key, value in CLIPBackbone("tvr-tiny").clip.state_dict().items()}
    temporal = create_head("diffusionret", embed_dim=64, temporal_layers=2, temporal_heads=2).temporal.state_dict()
    reference_names = {new.removeprefix("temporal."): old for old, new in prefixed_renames("temporal.")}
    seq_transf = {
        next(old + key[len(new) :] for new, old in reference_names.items() if key.startswith(new)): value
        for key, value in temporal.items()
    }
    tables = {
        f"{side}.{buffer}pe": torch.zeros(5000, 1, 64)
        for side in ("diffusion_model", "diffusion_model_v")
        for buffer in ("sequence_pos_encoder.", "embed_timestep.sequence_pos_encoder.")
    }
    release = {**clip, **seq_transf, **GOLDEN["state_dict"], **tables}
    torch.save(release, path)
    return release


@pytest.mark.slow
def test_a_released_checkpoint_converts_and_tvr_eval_reports_both_stages_from_it(data_dir, tmp_path):
    release = diffusionret_release(tmp_path / "best.pth")
    target = tmp_path / "diffusionret.ckpt"
    overrides = ["experiment=synthetic_diffusionret_gen", "head.t2v_k=4", "head.v2t_k=4", f"paths.data_dir={data_dir}"]
    overrides += SMALL_OVERRIDES
    assert convert_checkpoint(tmp_path / "best.pth", target, overrides) == ([], [])
    state = load_checkpoint_file(target)["state_dict"]
    torch.testing.assert_close(
        state["head.v2t_generator.decoder.0.weight"], release["diffusion_model_v.decoder.0.weight"]
    )
    assert state["backbone.clip.visual.conv1.weight"].dtype == torch.float32  # fp16 release, fp32 model
    cfg = compose_train(
        [f"ckpt_path={target}"] + SMALL_OVERRIDES + QUIET, data_dir, tmp_path / "eval", config_name="eval"
    )
    evaluated = evaluate(cfg)
    assert evaluated["second_stage"]["t2v_k"] == 4  # the headline: both stages
    assert set(evaluated["first_stage"]) >= {"t2v", "v2t"}  # the stage-1 ablation, from the same file


def test_the_evaluation_seed_moves_the_start_noise_and_the_same_seed_repeats():
    head = golden_head().eval()
    with torch.no_grad():
        text, video = representations(head, "eval")
        rows = head.similarity(text, video)
        queries = torch.arange(len(rows))
        first, again, other = (head.rerank_queries("t2v", rows, text, video, queries, seed) for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
