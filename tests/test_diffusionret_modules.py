"""Behaviour of DiffusionRet's numerical core beyond the golden fixture (``tvr.models.heads.diffusionret``):
permutation equivariance and frame masking of the generators, where the loss's gradient goes, what the
re-ranking may and may not touch, the options the fixture holds at their defaults (temperatures, alpha, neg),
candidate mining's same-video rules, and the refusals. Inputs and weights are the golden fixture's where a
realistic model is needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_diffusionret_golden import CONFIG, GOLDEN, TRAIN_STEPS, generators, reproduce
from tvr.models.heads.diffusionret.candidates import mine_candidates, same_video_pairs
from tvr.models.heads.diffusionret.generator import RelevanceGenerator
from tvr.models.heads.diffusionret.losses import generation_losses
from tvr.models.heads.diffusionret.sampling import ddim_sample, rerank_rows, t2v_denoiser, v2t_denoiser
from tvr.models.heads.diffusionret.schedule import CosineSchedule

DTYPE = torch.float64


def unit_inputs(direction: str) -> dict[str, torch.Tensor]:
    """The fixture's direct generator call: x, t and the direction's conditioning, in float64."""
    return {
        "x": GOLDEN["unit_x"].to(DTYPE),
        "t": GOLDEN["unit_t"],
        "text_emb": GOLDEN[f"unit_{direction}_text_emb"].to(DTYPE),
        "video_emb": GOLDEN[f"unit_{direction}_video_emb"].to(DTYPE),
        "video_mask": GOLDEN[f"unit_{direction}_video_mask"],
    }


def permuted(direction: str, inputs: dict, order: torch.Tensor) -> dict:
    """The same call with the candidates in ``order`` (the candidate axis is 1 for x and the candidate side)."""
    candidate_side = ("video_emb", "video_mask") if direction == "t2v" else ("text_emb",)
    return {k: v[:, order] if k == "x" or k in candidate_side else v for k, v in inputs.items()}


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_generators_are_permutation_equivariant(direction) -> None:
    generator = generators(DTYPE)[direction]
    inputs = unit_inputs(direction)
    candidates = inputs["x"].shape[1]
    out = generator(**inputs)
    for order in (torch.arange(candidates).flip(0), torch.arange(candidates).roll(1)):
        torch.testing.assert_close(generator(**permuted(direction, inputs, order)), out[:, order], rtol=0, atol=1e-12)


def with_padded_frames_replaced(direction: str, inputs: dict) -> dict:
    """The call with every padded frame's features replaced by large values."""
    padded = inputs["video_mask"] == 0
    assert padded.any()
    frames = inputs["video_emb"].clone()
    frames[padded] = 40.0 * torch.ones_like(frames[padded])
    return {**inputs, "video_emb": frames}


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_padded_frames_do_not_enter_the_pooled_video(direction) -> None:
    """Quirk Q9: the reference multiplies the frame softmax by the mask, so padded frames take probability mass
    (their values move the real frames' weights) that is then dropped; ``pool_renorm`` makes the pooling
    independent of them."""
    fixture = generators(DTYPE)[direction]
    renormalised = RelevanceGenerator(fixture.width, direction, pool_renorm=True).to(DTYPE)
    renormalised.load_state_dict(fixture.state_dict())
    renormalised.timestep_table.copy_(fixture.timestep_table)
    inputs = unit_inputs(direction)
    replaced = with_padded_frames_replaced(direction, inputs)
    torch.testing.assert_close(renormalised(**replaced), renormalised(**inputs), rtol=0, atol=1e-12)
    assert not torch.allclose(fixture(**replaced), fixture(**inputs), rtol=0, atol=1e-6)
    mask = inputs["video_mask"] if direction == "t2v" else inputs["video_mask"][:, None, :]
    reference_mass = (fixture.pool_weights(*_pool_inputs(direction, inputs)) * mask).sum(dim=-1)
    assert (reference_mass < 1 - 1e-6).any()  # the padding takes mass from the reference's pooling


def _pool_inputs(direction: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if direction == "t2v":
        return inputs["text_emb"][:, None, :], inputs["video_emb"]
    return inputs["text_emb"], inputs["video_emb"][:, None, :, :]


def test_pool_temperature_divides_the_pooling_logits() -> None:
    inputs = unit_inputs("t2v")
    generator = RelevanceGenerator(inputs["text_emb"].shape[1], "t2v", pool_temp=2.5).to(DTYPE)
    record: dict = {}
    generator(**inputs, record=record)
    logits = torch.einsum("bd,bnfd->bnf", inputs["text_emb"], inputs["video_emb"])
    torch.testing.assert_close(record["pool_weight"], (logits / 2.5).softmax(dim=-1), rtol=0, atol=1e-12)


def test_init_is_the_references() -> None:
    generator = RelevanceGenerator(256, "v2t", init_std=0.05)
    for name, parameter in generator.named_parameters():
        if name.endswith("bias"):
            assert not parameter.any(), name
        else:
            assert abs(parameter.std().item() - 0.05) < 0.005, name


def training_batch(variant: str = "train") -> dict:
    return {
        "eot": GOLDEN["train_cls"].to(DTYPE),
        "frames": GOLDEN["train_video_feat"].to(DTYPE),
        "frame_mask": GOLDEN["train_video_mask"],
        "t2v_cand": GOLDEN[f"{variant}_cand_t2v"],
        "v2t_cand": GOLDEN[f"{variant}_cand_v2t"],
        "t": GOLDEN[f"{variant}_t"],
        "noise_t2v": GOLDEN[f"{variant}_noise_t2v"],
        "noise_v2t": GOLDEN[f"{variant}_noise_v2t"],
    }


def test_gradient_reaches_every_generator_parameter_but_the_output_bias() -> None:
    """``decoder.2.bias`` shifts every candidate's output alike and the CE over candidates is shift-invariant: its
    gradient is zero up to the rounding of Σ softmax − 1; every other parameter learns. Each direction's loss
    reaches only its own generator."""
    gens = generators(DTYPE)
    losses = generation_losses(gens["t2v"], gens["v2t"], CosineSchedule(TRAIN_STEPS), **training_batch())
    for direction in ("t2v", "v2t"):
        for generator in gens.values():
            generator.zero_grad(set_to_none=True)
        losses[f"loss_gen_{direction}"].backward(retain_graph=True)
        other = gens["v2t" if direction == "t2v" else "t2v"]
        assert all(parameter.grad is None for parameter in other.parameters())
        for name, parameter in gens[direction].named_parameters():
            norm = parameter.grad.abs().max().item()
            if name == "decoder.2.bias":
                assert norm <= 1e-12, name
            else:
                assert norm > 1e-6, name


def test_loss_options_reach_the_loss() -> None:
    """``d_temp`` scales the CE's logits; ``neg`` is the negatives' target value (noised by q_sample)."""
    gens = generators(DTYPE)
    schedule = CosineSchedule(TRAIN_STEPS)
    batch = training_batch()
    losses = generation_losses(gens["t2v"], gens["v2t"], schedule, **batch, d_temp=3.0, neg=-1.0)
    positive = torch.zeros(batch["t"].shape[0], dtype=torch.long)
    torch.testing.assert_close(losses["loss_gen_t2v"], F.cross_entropy(3.0 * losses["out_t2v"], positive))
    target = torch.full(batch["noise_t2v"].shape, -1.0)
    target[:, 0] = 1.0
    torch.testing.assert_close(
        losses["x_t_v2t"], schedule.q_sample(target, batch["t"], batch["noise_v2t"]), rtol=0, atol=0
    )
    assert losses["x_t_t2v"].dtype == torch.float32  # the reference's float32 x₀ and coefficients


def eval_rerank(direction: str, **options) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The fixture's T = 50 re-ranking of one direction with the recorded start noise."""
    gens = generators(DTYPE)
    scores = reproduce()["eval_sim_stage1"]
    eot, frames = GOLDEN["eval_cls"].to(DTYPE), GOLDEN["eval_video_feat"].to(DTYPE)
    mask = GOLDEN["eval_video_mask"]
    if direction == "t2v":
        rows, denoise = scores, t2v_denoiser(gens["t2v"], eot, frames, mask)
    else:
        rows, denoise = scores.T, v2t_denoiser(gens["v2t"], frames, mask, eot)
    x_T = GOLDEN[f"eval_{direction}_xT"]
    record: dict = {}
    options = {"chunk": CONFIG["t2v_num"], **options}
    reranked = rerank_rows(rows, x_T.shape[1], x_T, denoise, CosineSchedule(TRAIN_STEPS), record=record, **options)
    return rows, reranked, record


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_rerank_touches_only_each_querys_top_k(direction) -> None:
    rows, reranked, record = eval_rerank(direction)
    in_top_k = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, record["cand"], True)
    assert torch.equal(reranked[~in_top_k], rows[~in_top_k])
    torch.testing.assert_close(reranked.gather(1, record["cand"]) - rows.gather(1, record["cand"]), record["added"])
    assert torch.equal(record["cand"], rows.topk(record["cand"].shape[1], dim=1).indices)


@pytest.mark.slow  # ~40 s on 2 shared cores: chunks of one query run 50 steps per query
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_rerank_does_not_depend_on_the_chunk_size(direction) -> None:
    _, reference, _ = eval_rerank(direction)
    queries = reference.shape[0]
    for chunk in (1, 3, queries):
        _, reranked, _ = eval_rerank(direction, chunk=chunk)
        torch.testing.assert_close(reranked, reference, rtol=0, atol=1e-12)


def test_rerank_adds_alpha_times_the_tempered_softmax_of_the_clamped_sample() -> None:
    """With a denoiser that always predicts ``p``, the sample is ``clamp(p)`` and the added term
    ``alpha · softmax(temp · clamp(p))`` (the fixture has alpha = temp = 1 and the clamp inside its trajectory)."""
    rows = GOLDEN["eval_sim_stage1"]
    k = 3
    prediction = torch.linspace(-2.0, 2.0, rows.shape[0] * k, dtype=DTYPE).reshape(rows.shape[0], k)

    def fixed(candidates, span):
        return lambda x, t: prediction[span[0] : span[1]]

    record: dict = {}
    x_T = torch.zeros(rows.shape[0], k)
    reranked = rerank_rows(rows, k, x_T, fixed, CosineSchedule(5), alpha=0.5, temp=3.0, chunk=4, record=record)
    expected = 0.5 * (3.0 * prediction.clamp(-1, 1)).softmax(dim=-1)
    torch.testing.assert_close(record["added"], expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(reranked.gather(1, record["cand"]), rows.gather(1, record["cand"]) + expected)


def test_ddim_ends_at_the_last_clamped_prediction() -> None:
    """``ᾱ_prev(0) = 1``: the last step returns ``x̂₀`` itself, whatever the noise estimate."""
    schedule = CosineSchedule(7)
    prediction = torch.tensor([[0.3, -4.0, 2.0]], dtype=DTYPE)
    record: dict = {}
    final = ddim_sample(lambda x, t: prediction + 0.1 * t[:, None], torch.ones(1, 3, dtype=DTYPE), schedule, record)
    assert torch.equal(final, prediction.clamp(-1, 1))
    assert torch.equal(record["t_seq"], torch.arange(6, -1, -1))
    assert record["x_traj"].shape == (8, 1, 3)


def test_ddim_runs_its_first_step_on_the_start_noise_as_drawn() -> None:
    """The reference's ``x_T`` is float32 whatever the model's dtype, and its first step takes ``√(1/ᾱ)·x_T`` in
    float32 (spec §5, §12): the start noise is not cast up front; later steps run in the prediction's dtype."""
    seen: list[torch.dtype] = []

    def recording(x, t):
        seen.append(x.dtype)
        return torch.zeros(x.shape, dtype=DTYPE)

    ddim_sample(recording, GOLDEN["eval_t2v_xT"][:2], CosineSchedule(3))
    assert seen == [torch.float32, DTYPE, DTYPE]


def test_same_video_pairs_rank_local_and_global() -> None:
    """Quirk Q2: rank-local masking sees only same-video pairs inside one rank's block of the gathered batch."""
    ids = torch.tensor([7, 8, 7, 9, 8, 5])
    global_pairs = same_video_pairs(ids, ranks=2, rank_local=False)
    local_pairs = same_video_pairs(ids, ranks=2, rank_local=True)
    assert global_pairs.diagonal().all() and local_pairs.diagonal().all()
    assert global_pairs[0, 2] and local_pairs[0, 2]  # same rank (block 0..2)
    assert global_pairs[1, 4] and not local_pairs[1, 4]  # ranks 0 and 1
    assert torch.equal(global_pairs, same_video_pairs(ids))
    assert torch.equal(global_pairs, global_pairs.T) and torch.equal(local_pairs, local_pairs.T)
    assert global_pairs.sum() == 6 + 4 and local_pairs.sum() == 6 + 2
    with pytest.raises(ValueError, match="split evenly"):
        same_video_pairs(ids, ranks=4)


def test_duplicate_policy_drop_never_lists_a_same_video_negative() -> None:
    scores = reproduce()["train_sim"]
    same_video = same_video_pairs(GOLDEN["train_idx_dup"])
    batch = scores.shape[0]
    most = batch - int(same_video.sum(dim=1).max())
    queries = torch.arange(batch)[:, None]
    for num in (1, most):
        dropped = mine_candidates(scores, same_video, num, duplicate_policy="drop")
        tied = mine_candidates(scores, same_video, num)
        for lists, reference in zip(dropped, tied):
            assert not same_video[queries, lists[:, 1:]].any()
            assert torch.equal(lists, reference)  # below the limit both take the hardest other-video items
    tied = mine_candidates(scores, same_video, batch - 1)
    assert any(same_video[queries, lists[:, 1:]].any() for lists in tied)  # the reference's tie (Q3)
    with pytest.raises(ValueError, match="duplicate_policy=drop needs num"):
        mine_candidates(scores, same_video, most + 1, duplicate_policy="drop")


def test_candidates_are_ordered_by_decreasing_weight() -> None:
    scores = reproduce()["train_sim"]
    t2v, v2t = mine_candidates(scores, same_video_pairs(GOLDEN["train_idx"]), 7)
    for lists, oriented in ((t2v, scores), (v2t, scores.T)):
        assert torch.equal(lists[:, 0], torch.arange(scores.shape[0]))
        picked = oriented.gather(1, lists[:, 1:])
        assert (picked[:, :-1] >= picked[:, 1:]).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: CosineSchedule(0), "diffusion steps must be >= 1"),
        (lambda: CosineSchedule(5, coef_dtype="float16"), "coef_dtype must be one of"),
        (lambda: CosineSchedule(5).coefficient("betas", torch.tensor([5]), torch.zeros(1)), r"lie in \[0, 4\]"),
        (lambda: CosineSchedule(5).coefficient("alphas", torch.tensor([1]), torch.zeros(1)), "unknown schedule"),
        (lambda: RelevanceGenerator(8, "x2y"), "direction must be one of"),
        (lambda: mine_candidates(torch.zeros(4, 4), torch.eye(4, dtype=torch.bool), 4), r"num \(4\) must lie"),
        (lambda: mine_candidates(torch.zeros(4, 4), torch.eye(4, dtype=torch.bool), 1, "keep"), "duplicate_policy"),
        (
            lambda: rerank_rows(torch.zeros(2, 3), 4, torch.zeros(2, 4), None, CosineSchedule(2)),
            r"k must lie in \[1, 3\]",
        ),
        (lambda: rerank_rows(torch.zeros(2, 3), 2, torch.zeros(3, 2), None, CosineSchedule(2)), "x_T must have"),
        (lambda: t2v_denoiser(RelevanceGenerator(8, "v2t"), None, None, None), "needs the t2v generator"),
    ],
)
def test_bad_input_is_refused(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_generator_refuses_mismatched_shapes() -> None:
    generator = generators(DTYPE)["t2v"]
    inputs = unit_inputs("t2v")
    with pytest.raises(ValueError, match="video_mask must have shape"):
        generator(**{**inputs, "video_mask": inputs["video_mask"][:, :, :-1]})
    with pytest.raises(ValueError, match="t2v generator: x must be"):
        generator(**unit_inputs("v2t"))
