"""DiffusionRet's numerical core (``tvr.models.heads.diffusionret``) reproduces the reference's own outputs
(diffusionret_golden: jpthu17/DiffusionRet's modules and ``_run_on_single_gpu`` run in float64 on tiny weights
with every generator parameter off its init; methods spec §12).

Everything is taken from the fixture: widths, candidate counts, chunk sizes, schedules' lengths, the recorded
draws (DDIM start noise per chunk, training timesteps and noise), the weights by their reference names.
:func:`reproduce` computes every fixture tensor the tvr way under the fixture's names: the stage-1 matrix with
tvr's shared token-wise module (HBI's WTI), both directions' re-ranking with the recorded ``x_T``, candidate
mining from the training matrix and real ids, the generation losses and every generator gradient.

Tolerances (spec §12): float64 with the reference's float32 coefficients at 1e-10, except the DDIM trajectory
(see :data:`DDIM_ATOL`); float32 at the reference's own fp32 gap scale; float64 without the coefficient
rounding (``coef_dtype="model"``) at the size of ``coef_fp32_effect``."""

from __future__ import annotations

import ast
import json
import re
from functools import cache

import pytest
import torch

from conftest import FIXTURES
from tvr.models.heads.diffusionret.candidates import mine_candidates, same_video_pairs
from tvr.models.heads.diffusionret.generator import RelevanceGenerator, timestep_table
from tvr.models.heads.diffusionret.losses import generation_losses
from tvr.models.heads.diffusionret.sampling import rerank_rows, t2v_denoiser, v2t_denoiser
from tvr.models.heads.diffusionret.schedule import COEFFICIENTS, CosineSchedule
from tvr.models.heads.hbi.wti import HBI_WTI, hbi_weight_mlp

GOLDEN = torch.load(FIXTURES / "golden" / "diffusionret_golden.pt", weights_only=True)
INFO = json.loads((FIXTURES / "golden" / "diffusionret_golden.json").read_text())
CONFIG = INFO["config"]
STATE = GOLDEN["state_dict"]
PREFIX = {"t2v": "diffusion_model.", "v2t": "diffusion_model_v."}
WIDTH = STATE["diffusion_model.q_proj.weight"].shape[1]
SCHEDULES = sorted({int(m[1]) for key in GOLDEN if (m := re.fullmatch(r"sched(\d+)_betas", key))})
#: inference runs: fixture prefix -> number of DDIM steps (the length of its recorded timestep sequence)
EVAL_RUNS = {prefix: GOLDEN[f"{prefix}_t2v_t_seq"].numel() for prefix in ("eval", "eval_few")}
CHUNK = {"t2v": CONFIG["t2v_num"], "v2t": CONFIG["v2t_num"]}  # the reference's DDIM chunk of queries
ALPHA = {"t2v": CONFIG["t2v_alpha"], "v2t": CONFIG["v2t_alpha"]}
TEMP = {"t2v": CONFIG["t2v_temp"], "v2t": CONFIG["v2t_temp"]}
TRAIN_IDS = {"train": "train_idx", "train_dup": "train_idx_dup", "train_hn": "train_idx_dup"}  # spec §12 table
TRAIN_STEPS = CONFIG["diffusion_steps"]
#: Fixture entries that are inputs (weights, features, recorded draws) or outside this package (the stage-1 loss)
NOT_OUTPUTS = re.compile(
    r"state_dict|pe_rows|logit_scale_log|unit_x|unit_t|train_idx(_dup)?"
    r"|(eval|train)_(text_feat|text_mask|cls|video_feat|video_mask)"
    r"|unit_(t2v|v2t)_(text_emb|video_emb|video_mask)"
    r"|.*_(xT|t|noise_t2v|noise_v2t)"
    r"|train(_dup|_hn)?_loss(_disc)?"
)
TIE_ROWS = {
    int(row)
    for rows in ast.literal_eval(INFO["tensors"]["train_dup_tie_rows"]["what"].split(": ", 1)[1]).values()
    for row in rows
}

#: The reference's float32 √ᾱ_prev and √(1 − ᾱ_prev) (float32 sqrt of float32 ᾱ_prev) are, at about a fifth of
#: the steps, one float32 ulp away from the correctly rounded values torch and numpy give here: each recorded step
#: is exactly linear in (x̂₀, x_t), and solving for its coefficients gives √(1/ᾱ), √(1/ᾱ − 1) exact and those two
#: one ulp off wherever the exact root lies 0.3–0.75 ulp from a float32 (a sqrt of the fixture's torch build that is
#: not correctly rounded). These ulps (6e-8 relative) accumulate along the steps: ≤ 6e-7 on the trajectory,
#: ≤ 1e-7 on the generator outputs, ≤ 5e-9 on the added softmax. The bounds stay below the effect of not rounding
#: the coefficients at all (coef_fp32_effect: 2.3e-7 on pred_x0, 2.6e-8 on the fused scores) except on the
#: trajectory, whose intermediate states that effect leaves at 1e-6.
DDIM_ATOL = {"x_traj": 1e-6, "model_out": 1.5e-7, "pred_x0": 1.5e-7, "added": 1e-8, "final": 1e-8}


def generators(dtype: torch.dtype) -> dict[str, RelevanceGenerator]:
    """Both generators with the fixture's weights (reference key names) and its sinusoid rows."""
    built = {}
    for direction, prefix in PREFIX.items():
        generator = RelevanceGenerator(WIDTH, direction, pool_temp=CONFIG["temp"])
        generator.load_state_dict({k[len(prefix) :]: v for k, v in STATE.items() if k.startswith(prefix)})
        # the reference's float32 sinusoids come from its torch build's exp/sin (test_timestep_table)
        generator.timestep_table[: GOLDEN["pe_rows"].shape[0]] = GOLDEN["pe_rows"]
        built[direction] = generator.to(dtype)
    return built


def weight_mlps(dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    mlps = {}
    for side in ("text", "video"):
        mlp = hbi_weight_mlp(WIDTH)
        prefix = f"{side}_weight_fc."
        mlp.load_state_dict({k[len(prefix) :]: v for k, v in STATE.items() if k.startswith(prefix)})
        mlps[side] = mlp.to(dtype)
    return mlps


def stage1(split: str, dtype: torch.dtype) -> torch.Tensor:
    """The WTI matrix [texts, videos] with tvr's shared token-wise module (HBI's entity level)."""
    mlps = weight_mlps(dtype)
    text, video = GOLDEN[f"{split}_text_feat"].to(dtype), GOLDEN[f"{split}_video_feat"].to(dtype)
    text_mask, video_mask = GOLDEN[f"{split}_text_mask"], GOLDEN[f"{split}_video_mask"]
    return HBI_WTI.similarity(
        text / text.norm(dim=-1, keepdim=True),
        video / video.norm(dim=-1, keepdim=True),
        HBI_WTI.weights(mlps["text"](text), text_mask),
        HBI_WTI.weights(mlps["video"](video), video_mask),
        text_mask,
        video_mask,
    )


@cache
def reproduce(dtype: torch.dtype = torch.float64, coef_dtype: str = "float32") -> dict[str, torch.Tensor]:
    """Every comparable fixture tensor, computed by tvr, under the fixture's names."""
    out: dict[str, torch.Tensor] = {}
    gens = generators(dtype)
    for steps in SCHEDULES:
        schedule = CosineSchedule(steps, coef_dtype=coef_dtype)
        out.update({f"sched{steps}_{name}": getattr(schedule, name) for name in COEFFICIENTS})
    for direction in ("t2v", "v2t"):
        record: dict = {}
        unit = {name: GOLDEN[f"unit_{direction}_{name}"] for name in ("text_emb", "video_emb", "video_mask")}
        gens[direction](
            GOLDEN["unit_x"].to(dtype),
            GOLDEN["unit_t"],
            unit["text_emb"].to(dtype),
            unit["video_emb"].to(dtype),
            unit["video_mask"],
            record=record,
        )
        out.update({f"unit_{direction}_{name}": value for name, value in record.items()})

    scores = stage1("eval", dtype)
    out["eval_sim_stage1"] = scores
    eot, frames, mask = GOLDEN["eval_cls"].to(dtype), GOLDEN["eval_video_feat"].to(dtype), GOLDEN["eval_video_mask"]
    denoisers = {
        "t2v": t2v_denoiser(gens["t2v"], eot, frames, mask),
        "v2t": v2t_denoiser(gens["v2t"], frames, mask, eot),
    }
    for prefix, steps in EVAL_RUNS.items():
        schedule = CosineSchedule(steps, coef_dtype=coef_dtype)
        for direction, rows in (("t2v", scores), ("v2t", scores.T)):
            record = {}
            x_T = GOLDEN[f"{prefix}_{direction}_xT"]  # float32 as drawn: the first step runs on it as is
            out[f"{prefix}_{direction}_final"] = rerank_rows(
                rows,
                x_T.shape[1],
                x_T if coef_dtype == "float32" else x_T.to(dtype),
                denoisers[direction],
                schedule,
                alpha=ALPHA[direction],
                temp=TEMP[direction],
                chunk=CHUNK[direction],
                record=record,
            )
            out.update({f"{prefix}_{direction}_{name}": value for name, value in record.items()})

    train_scores = stage1("train", dtype)
    train_gens = generators(dtype)
    schedule = CosineSchedule(TRAIN_STEPS, coef_dtype=coef_dtype)
    for variant, ids in TRAIN_IDS.items():
        num = GOLDEN[f"{variant}_cand_t2v"].shape[1] - 1
        out[f"{variant}_sim"] = train_scores
        cand_t2v, cand_v2t = mine_candidates(train_scores, same_video_pairs(GOLDEN[ids]), num)
        out[f"{variant}_cand_t2v"], out[f"{variant}_cand_v2t"] = cand_t2v, cand_v2t
        for generator in train_gens.values():
            generator.zero_grad(set_to_none=True)
        # the recorded lists: the tie rows' duplicate is implementation-defined (compared in test_candidates)
        losses = generation_losses(
            train_gens["t2v"],
            train_gens["v2t"],
            schedule,
            GOLDEN["train_cls"].to(dtype),
            GOLDEN["train_video_feat"].to(dtype),
            GOLDEN["train_video_mask"],
            GOLDEN[f"{variant}_cand_t2v"],
            GOLDEN[f"{variant}_cand_v2t"],
            GOLDEN[f"{variant}_t"],
            GOLDEN[f"{variant}_noise_t2v"],
            GOLDEN[f"{variant}_noise_v2t"],
            d_temp=CONFIG["d_temp"],
            neg=float(CONFIG["neg"]),
        )
        out.update({f"{variant}_{name}": value.detach() for name, value in losses.items()})
        out[f"{variant}_loss_gen"] = out[f"{variant}_loss_gen_t2v"] + out[f"{variant}_loss_gen_v2t"]
        if variant == "train":
            (losses["loss_gen_t2v"] + losses["loss_gen_v2t"]).backward()
            for direction, prefix in PREFIX.items():
                for name, parameter in train_gens[direction].named_parameters():
                    out[f"train_grad.{prefix}{name}"] = parameter.grad
    return out


def compared(dtype: torch.dtype, coef_dtype: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``key -> (tvr's, the reference's)`` for every fixture output but the indices (test_indices_...)."""
    produced = reproduce(dtype, coef_dtype)
    outputs = [key for key in GOLDEN if not NOT_OUTPUTS.fullmatch(key)]
    missing = [key for key in outputs if key not in produced]
    assert not missing, f"fixture outputs not reproduced: {missing}"
    return {key: (produced[key].double(), GOLDEN[key].double()) for key in outputs if group(key) != "indices"}


def group(key: str) -> str:
    """The fixture's tensor groups (spec §12 table), for the parity table."""
    if key.startswith("sched"):
        return "schedule"
    if key.startswith("unit_"):
        return "denoiser unit call"
    if key == "eval_sim_stage1" or key.endswith("_sim"):
        return "stage-1 WTI"
    if key.endswith(("_cand", "_cand_t2v", "_cand_v2t", "_t_seq")):
        return "indices"
    if key.startswith("eval"):
        name = re.sub(r"^eval(_few)?_(t2v|v2t)_", "", key)
        return f"DDIM {name}"
    if key.startswith("train_grad."):
        return "gradients"
    return "training step"


def tolerance(key: str, dtype: torch.dtype, coef_dtype: str) -> float:
    if group(key) == "indices":
        return 0.0
    if dtype == torch.float32:  # spec §12: the reference's own fp32 gap is ≤ 2e-5 on gradients, ≤ 1e-6 elsewhere
        return 1e-4 if group(key) == "gradients" else 1e-5
    if coef_dtype == "model":  # spec §12: coef_fp32_effect ≤ 1e-6 (losses), ≤ 3e-7 (pred_x0)
        return 2e-6
    if key.startswith("sched"):
        return 1e-15
    if group(key).startswith("DDIM"):
        return DDIM_ATOL[group(key).split()[1]]
    return 1e-10


def max_diffs(dtype: torch.dtype = torch.float64, coef_dtype: str = "float32") -> dict[str, float]:
    """Max |tvr − reference| per fixture output (the parity table)."""
    return {key: (mine - ref).abs().max().item() for key, (mine, ref) in compared(dtype, coef_dtype).items()}


PRECISIONS = [(torch.float64, "float32"), (torch.float32, "float32"), (torch.float64, "model")]


@pytest.mark.parametrize(("dtype", "coef_dtype"), PRECISIONS, ids=["fp64", "fp32", "fp64-unrounded"])
def test_reproduces_every_fixture_tensor(dtype, coef_dtype) -> None:
    failures = []
    for key, (mine, reference) in compared(dtype, coef_dtype).items():
        assert mine.shape == reference.shape, key
        assert torch.isfinite(mine).all(), key
        diff = (mine - reference).abs().max().item()
        if diff > tolerance(key, dtype, coef_dtype):
            failures.append(f"{key}: {diff:.3g} > {tolerance(key, dtype, coef_dtype):.3g}")
    assert not failures, "\n".join(failures)


def test_indices_are_the_references() -> None:
    """Re-rank candidates and DDIM timesteps exactly; training candidates exactly except where the fixture's list
    holds a same-video item among the negatives (the ``num = B − 1`` tie of quirk Q3, implementation-defined):
    there tvr's list must hold a same-video item too."""
    produced = reproduce()
    for prefix in EVAL_RUNS:
        for direction in ("t2v", "v2t"):
            for name in ("cand", "t_seq"):
                key = f"{prefix}_{direction}_{name}"
                assert torch.equal(produced[key], GOLDEN[key]), key
    for variant, ids in TRAIN_IDS.items():
        same_video = same_video_pairs(GOLDEN[ids])
        for direction in ("t2v", "v2t"):
            key = f"{variant}_cand_{direction}"
            mine, reference = produced[key], GOLDEN[key]
            queries = torch.arange(reference.shape[0])[:, None]
            tie = same_video[queries, reference]
            tie[:, 0] = False
            assert set(tie.any(dim=1).nonzero().flatten().tolist()) <= TIE_ROWS, key
            assert torch.equal(mine[~tie], reference[~tie]), key
            assert same_video[queries, mine][tie].all(), key
    assert any(same_video_pairs(GOLDEN["train_idx_dup"])[row].sum() > 1 for row in TIE_ROWS)


def test_timestep_table_is_the_references_sinusoid() -> None:
    """The recomputed table (the reference's buffers are dropped at conversion) against the rows the fixture
    holds: float32 exp/sin of different torch builds differ by a few ulps of the argument (≤ 2e-6 here)."""
    rows = GOLDEN["pe_rows"]
    table = timestep_table(rows.shape[0], rows.shape[1])
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, rows, atol=4e-6, rtol=0)
    assert not RelevanceGenerator(WIDTH, "t2v").state_dict().keys() & {"timestep_table"}


def test_generator_keys_are_the_references() -> None:
    for direction, prefix in PREFIX.items():
        reference = {k[len(prefix) :]: tuple(v.shape) for k, v in STATE.items() if k.startswith(prefix)}
        generator = RelevanceGenerator(WIDTH, direction)
        assert {k: tuple(v.shape) for k, v in generator.state_dict().items()} == reference
