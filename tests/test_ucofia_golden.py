"""UCoFiA against its reference (Ziyang412/UCoFiA, all three code copies) through tvr's head, key mapping and
SK-norm re-ranker, in float64 with the fixture's recorded selection noise injected (methods spec §3.14).

Sizes, top-k, sample counts, sigma, tau, the evaluation tiles and the bank rows all come from the fixture
(tensor shapes, ``item_index`` and the json's ``config``); tolerances are the spec's.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED
from tvr.evaluation.rerank import create_reranker
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.convert import map_reference_head_keys
from tvr.models.heads import create_head
from tvr.models.heads.base import masked_mean_of_unit_frames
from tvr.models.heads.ucofia.head import LEVELS, UNUSED_MATRICES
from tvr.models.heads.ucofia.selection import perturbed_topk_indices
from tvr.models.losses import create_loss
from tvr.models.losses.base import diagonal_cross_entropy
from tvr.models.similarity import tiled_similarity

FIXTURE = SHARED / "golden" / "ucofia"
GOLDEN = torch.load(FIXTURE / "ucofia_golden.pt", weights_only=True)
CONFIG = json.loads((FIXTURE / "ucofia_golden.json").read_text())["config"]
INPUTS, STATE, ROWS = GOLDEN["inputs"], GOLDEN["state_dict"], GOLDEN["item_index"]
EVAL_T2V_PREFIX = "eval_t2v/"  # the fixture's prefix for eval_t2v's own PredictorLG weights
ATOL, RTOL_GRAD, RTOL_GRAD_FP32, RTOL_SCALING = 1e-10, 1e-9, 1e-6, 1e-10
GRADIENT_NOISE_FLOOR = 1e-12
FRAMES = INPUTS["patch_tokens"].shape[1]
TEST_TILE, BANK_TILE = CONFIG["loader batch test/bank"]


def golden_head(selector: str = "ts2net", eval_w_l1: str = "omit"):
    """The fixture's model in float64, its reference-named weights loaded through tvr's key mapping."""
    layers, heads = CONFIG["seqTransf layers/heads"]
    head = create_head(
        "ucofia",
        embed_dim=INPUTS["text_feat"].shape[-1],
        max_words=INPUTS["text_feat"].shape[1],
        max_frames=FRAMES,
        temporal_layers=layers,
        temporal_heads=heads,
        max_positions=STATE["frame_position_embeddings.weight"].shape[0],
        init_from_clip=False,
        topk=GOLDEN["train_topk_indicator"].shape[1],
        topk_samples=GOLDEN["train_noise"].shape[1],
        topk_sigma=CONFIG["sigma"],
        isa_tau=CONFIG["tau"],
        selector=selector,
        eval_w_l1=eval_w_l1,
    )
    shared = {key: value for key, value in STATE.items() if not key.startswith(("clip.", EVAL_T2V_PREFIX))}
    if selector == "cvid":  # eval_t2v's predictor, under the same reference names
        shared = {key: value for key, value in shared.items() if not key.startswith("visual_token_selector.")}
        shared.update(
            {key[len(EVAL_T2V_PREFIX) :]: value for key, value in STATE.items() if key.startswith(EVAL_T2V_PREFIX)}
        )
    missing, unexpected = head.load_state_dict(map_reference_head_keys("ucofia", shared), strict=False)
    assert not unexpected and missing == ["_extra_state"]  # the noise generator is tvr's own
    head = head.double()
    logit_scale = torch.nn.Parameter(STATE["clip.logit_scale"].double().clone())
    head.bind_logit_scale(logit_scale)
    return head, logit_scale


def text_features(rows, feats=None) -> TextFeatures:
    feats = INPUTS["text_feat"][rows].double() if feats is None else feats
    eot = INPUTS["eot_pos"][rows]
    return TextFeatures(feats[torch.arange(len(rows)), eot], feats, INPUTS["text_mask"][rows].bool())


def video_features(rows, tokens=None) -> FrameFeatures:
    tokens = INPUTS["patch_tokens"][rows].double() if tokens is None else tokens
    return FrameFeatures(tokens[:, :, 0], INPUTS["video_mask"][rows].bool(), patches=tokens[:, :, 1:])


def encode_videos(head, rows, noise: torch.Tensor):
    """Encode ``rows`` consuming the first ``len(rows) * F`` recorded draws; returns the rest."""
    used = len(rows) * FRAMES
    head.selection_noise = lambda video: noise[:used]
    return head.encode_video(video_features(rows)), noise[used:]


def close(actual, expected, atol=ATOL, rtol=0.0):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def close_gradient(actual, expected, rtol=RTOL_GRAD):
    """Relative, with a floor of float64 cancellation noise (1e-12 of the tensor's largest entry) for entries
    that are zero up to rounding."""
    close(actual, expected, atol=GRADIENT_NOISE_FLOOR * float(expected.abs().max()), rtol=rtol)


# ---------------------------------------------------------------------- training step
@pytest.fixture(scope="module")
def training():
    head, logit_scale = golden_head()
    head.train()
    text_in = INPUTS["text_feat"][ROWS["text"]["train"]].double().requires_grad_(True)
    video_in = INPUTS["patch_tokens"][ROWS["video"]["train"]].double().requires_grad_(True)
    text = text_features(ROWS["text"]["train"], text_in)
    video = video_features(ROWS["video"]["train"], video_in)
    head.selection_noise = lambda features: GOLDEN["train_noise"]
    text_repr, video_repr = head.encode_text(text), head.encode_video(video)
    scores = head.similarity(text_repr, video_repr)
    # the module's rule: the configured loss on each trained score (here the mean), unscaled (uses_logit_scale False)
    assert not head.uses_logit_scale
    loss = sum(create_loss("infonce")(trained) for trained in scores.trained(head.trained_levels).values())
    loss.backward()
    return dict(
        head=head,
        logit_scale=logit_scale,
        text=text,
        video=video,
        text_repr=text_repr,
        video_repr=video_repr,
        scores=scores,
        loss=loss,
        text_in=text_in,
        video_in=video_in,
    )


def test_training_levels_mean_and_loss(training):
    scores = training["scores"]
    for index, level in enumerate(LEVELS, start=1):
        close(scores.levels[level], GOLDEN[f"train_S{index}"])
    close(scores.final, GOLDEN["train_sim"])
    close(
        torch.stack([diagonal_cross_entropy(scores.final), diagonal_cross_entropy(scores.final.t())]),
        GOLDEN["train_crossen"],
    )
    close(training["loss"], GOLDEN["train_loss"])


def test_training_intermediates(training):
    head, video = training["head"], training["video"]
    parts = head.patch_word_parts(training["text_repr"], training["video_repr"])
    for name, key in [
        ("alignment", "train_A"),
        ("word_level", "train_word_level"),
        ("frame_level", "train_frame_level"),
        ("sent2frame", "train_S3_sent2frame"),
        ("video2word", "train_S3_video2word"),
    ]:
        close(getattr(parts, name), GOLDEN[key])
    with torch.no_grad():
        sequence = head.temporal(video.frames, video.mask)
        close(sequence, GOLDEN["train_video_seq"])
        close(masked_mean_of_unit_frames(sequence, video.mask), GOLDEN["train_video_vec"])
        close(training["text_repr"]["sentence"], GOLDEN["train_sentence_unit"])
        close(head.selector(video.frames, video.patches, GOLDEN["train_noise"]), GOLDEN["train_selected_tokens"])


@pytest.mark.parametrize("run", ["train", "select_eval", "t2v", "v2t"])
def test_patch_selection(run):
    """Scores, the sorted top-k of the perturbed scores (training's stored indices) and the indicators."""
    head, _ = golden_head(selector="cvid" if run == "t2v" else "ts2net")
    rows = {"train": ROWS["video"]["train"], "v2t": ROWS["video"]["test"] + ROWS["video"]["bank"]}.get(
        run, ROWS["video"]["test"]
    )
    video = video_features(rows)
    noise = GOLDEN[f"{run}_noise"]
    assert noise.dtype == torch.float32 and noise.shape[0] == len(rows) * FRAMES
    with torch.no_grad():
        scores = head.selector.scores(video.frames, video.patches)
        close(scores, GOLDEN[f"{run}_pred_score"])
        close(head.selector.indicators(scores, noise), GOLDEN[f"{run}_topk_indicator"])
        if run == "train":
            indices = perturbed_topk_indices(scores[:, 1:], noise, head.topk, head.selector.sigma)
            assert torch.equal(indices, GOLDEN["train_topk_sorted_indices"])


def test_gradients_of_every_used_parameter_and_the_inputs(training):
    head = training["head"]
    expected = {key.removeprefix("grad/"): value for key, value in GOLDEN.items() if key.startswith("grad/")}
    close_gradient(training["logit_scale"].grad, expected.pop("clip.logit_scale"))
    names = {map_reference_head_keys("ucofia", {key: None}).popitem()[0]: key for key in expected}
    params = dict(head.named_parameters())
    assert set(names) == set(params)  # every parameter the head trains has its reference gradient
    for name, key in names.items():
        rtol = RTOL_GRAD_FP32 if expected[key].dtype == torch.float32 else RTOL_GRAD
        close_gradient(params[name].grad, expected[key], rtol)
    close_gradient(training["text_in"].grad, GOLDEN["grad_text_feat"])
    close_gradient(training["video_in"].grad, GOLDEN["grad_patch_tokens"])
    # the reference's unused matrices are kept for its checkpoints' keys, not trained (Q7)
    assert set(UNUSED_MATRICES) <= set(dict(head.named_buffers())) and not set(UNUSED_MATRICES) & set(params)


# ---------------------------------------------------------------------- the training code's per-epoch evaluation
def test_per_epoch_evaluation_with_w_l1_in_tiles():
    head, _ = golden_head(eval_w_l1="use")
    head.eval()
    with torch.no_grad():
        videos, rest = encode_videos(head, ROWS["video"]["test"], GOLDEN["select_eval_noise"])
        texts = head.encode_text(text_features(ROWS["text"]["test"]))
        levels = head.level_similarity(texts, videos)
        tiled = tiled_similarity(
            head, texts, videos, text_chunk=TEST_TILE, video_chunk=TEST_TILE, memory_budget_bytes=None
        )
    assert rest.numel() == 0
    for index, level in enumerate(LEVELS, start=1):
        close(levels[level], GOLDEN[f"select_eval_S{index}"])
    # tiles come back as float32 (tvr's score matrices): compared at float32's resolution
    close(tiled, GOLDEN["select_eval_sim"], atol=1e-5)
    close(head.similarity(texts, videos), GOLDEN["select_eval_sim"])


# ---------------------------------------------------------------------- SK-norm evaluation
def sknorm_run(direction: str):
    """The eval copy of ``direction`` (t2v: eval_t2v's selector; both without W_l1): test levels, bank levels."""
    head, _ = golden_head(selector="cvid" if direction == "t2v" else "ts2net", eval_w_l1="omit")
    head.eval()
    with torch.no_grad():
        videos, rest = encode_videos(head, ROWS["video"]["test"], GOLDEN[f"{direction}_noise"])
        texts = head.encode_text(text_features(ROWS["text"]["test"]))
        levels = head.level_similarity(texts, videos)
        if direction == "t2v":
            bank = head.level_similarity(head.encode_text(text_features(ROWS["text"]["bank"])), videos)
        else:
            bank_videos, rest = encode_videos(head, ROWS["video"]["bank"], rest)
            bank = head.level_similarity(texts, bank_videos)  # texts x bank videos, as the fixture stores it
    assert rest.numel() == 0
    return levels, bank


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_sknorm_levels_scalings_priors_and_final_matrix(direction):
    levels, bank = sknorm_run(direction)
    reranker = create_reranker("sknorm")
    for index, level in enumerate(LEVELS, start=1):
        close(levels[level], GOLDEN[f"{direction}_S{index}"])
        close(bank[level], GOLDEN[f"{direction}_bank_S{index}"])
    # the re-ranker's banks are [bank, gallery]: the v2t bank (texts x bank videos) enters transposed
    banks = {level: scores if direction == "t2v" else scores.t() for level, scores in bank.items()}
    priors = reranker.priors(banks)
    for index, level in enumerate(LEVELS, start=1):
        result = priors[level]
        close(result.bank_scaling, GOLDEN[f"{direction}_sk{index}_a"], atol=0.0, rtol=RTOL_SCALING)
        close(result.gallery_scaling, GOLDEN[f"{direction}_sk{index}_b"], atol=0.0, rtol=RTOL_SCALING)
        close(result.shift, GOLDEN[f"{direction}_sk{index}_max"])
        close(result.prior, GOLDEN[f"{direction}_prior{index}"])
        axis = (None, slice(None)) if direction == "t2v" else (slice(None), None)
        close(levels[level] + result.prior[axis], GOLDEN[f"{direction}_S{index}_sk"])
    close(reranker.rerank(levels, direction, banks), GOLDEN[f"{direction}_sim"])
