"""``train.clip_param_dtype=fp16``: the DRL/CLIP4Clip family's fp16 CLIP parameters and BertAdam's fp16 update
(methods spec clip4clip-xpool §2.6, drl-ucofia §1.2 and Q8), on CPU."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, LayerNormFp32

from conftest import compose_train
from tvr.builders import build_module

# CLIP4Clip's recipe schedule over a short run: warm-up over the first half (factor 0 at step 0), then the cosine
TOTAL_STEPS, WARMUP = 5, 0.5
PARITY = [
    "experiment=synthetic_seqtransf",  # a head with weights of its own, which stay fp32
    "optim=bertadam",
    "optim.schedule=clip4clip_warmup_cosine",
    f"optim.warmup_proportion={WARMUP}",
    "optim.backbone_lr=1e-3",
    "optim.head_lr=1e-2",
    "optim.weight_decay=0.2",
]
# Gradient scales per parameter, in turn: 1e-4 underflows (1 - beta2) g^2 in fp16 so v stays 0 (the spec's
# "steps grow" case); 1e-2 is Adam as usual; 1 makes most tensors' norm exceed max_grad_norm (per-tensor clip).
GRADIENT_SCALES = (1e-4, 1e-2, 1.0)
# What OpenAI's convert_weights casts in a ViT CLIP, written out by name: attention in/out projections, MLP
# layers, the patch embedding (a Conv2d) and the two projections.
FP16_NAMES = re.compile(
    r"backbone\.clip\.("
    r"(visual\.)?transformer\.resblocks\.\d+\.(attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)"
    r"|mlp\.c_fc\.(weight|bias)|mlp\.c_proj\.(weight|bias))"
    r"|visual\.conv1\.weight|text_projection|visual\.proj)$"
)


def parity_module(tmp_path, dtype: str = "fp16", extra: tuple[str, ...] = ()):
    """The training module with its optimiser and schedule (configure_optimizers, on a stand-in trainer)."""
    cfg = compose_train([*PARITY, f"train.clip_param_dtype={dtype}", *extra], tmp_path, tmp_path)
    module = build_module(cfg)
    module._trainer = SimpleNamespace(precision="32-true", estimated_stepping_batches=TOTAL_STEPS, max_epochs=1)
    configured = module.configure_optimizers()
    return module, configured["optimizer"], configured["lr_scheduler"]["scheduler"]


def set_gradients(module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random gradients in each parameter's dtype, at the scales above in turn; returns copies of them."""
    grads = {}
    for index, (name, param) in enumerate(module.named_parameters()):
        scale = GRADIENT_SCALES[index % len(GRADIENT_SCALES)]
        param.grad = (torch.randn(param.shape, generator=generator) * scale).to(param.dtype)
        grads[name] = param.grad.clone()
    return grads


def reference_schedule(step: int) -> float:
    """CLIP4Clip's warmup_cosine at x = step / t_total (its BertAdam evaluates it per parameter update)."""
    x = step / TOTAL_STEPS
    return x / WARMUP if x < WARMUP else 0.5 * (1.0 + math.cos(math.pi * x))


def reference_bertadam_update(param, grad, m, v, lr, weight_decay, b1=0.9, b2=0.98, eps=1e-6, max_grad_norm=1.0):
    """The reference's BertAdam step on one parameter (CLIP4Clip modules/optimization.py), in place, every
    tensor in the parameter's own dtype and every intermediate a tensor of its own: the gradient clipped to
    its own norm (in its dtype), no bias correction, ``update = m / (sqrt(v) + eps) + wd * p``, ``p += -(lr_t * update)``."""
    norm = torch.linalg.vector_norm(grad)  # the reference's clip_grad_norm_(p, max_grad_norm), by hand
    grad.mul_((max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    update = m / (v.sqrt() + eps)
    if weight_decay > 0.0:
        update += weight_decay * param
    update_with_lr = lr * update
    param.add_(-update_with_lr)


def test_fp16_bertadam_steps_are_the_reference_arithmetic_bit_for_bit(tmp_path):
    module, optimizer, scheduler = parity_module(tmp_path)
    groups = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    params = dict(module.named_parameters())
    reference = {name: param.detach().clone() for name, param in params.items()}
    initial = {name: param.detach().clone() for name, param in params.items()}
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in reference.items()}
    generator = torch.Generator().manual_seed(0)
    for step in range(TOTAL_STEPS - 1):
        grads = set_gradients(module, generator)
        optimizer.step()
        scheduler.step()
        for name, param in params.items():
            group = groups[id(param)]
            lr = group["initial_lr"] * reference_schedule(step)
            reference_bertadam_update(reference[name], grads[name], *moments[name], lr, group["weight_decay"])
            state = optimizer.state[param]
            for kept, expected in ((param.detach(), reference[name]), (state["exp_avg"], moments[name][0])):
                assert kept.dtype == expected.dtype == param.dtype, name
                assert torch.equal(kept, expected), f"step {step}: {name}"
            assert torch.equal(state["exp_avg_sq"], moments[name][1]), f"step {step}: {name}"
    fp16 = {name for name, param in params.items() if param.dtype == torch.float16}
    changed = {name for name in fp16 if not torch.equal(params[name].detach(), initial[name])}
    assert changed, "no fp16 weight moved: the test would not see the update arithmetic"
    # the fp16 regime the spec describes: gradients of 1e-4 leave v at exactly 0 in fp16 (never in fp32)
    underflowed = [name for name in fp16 if not optimizer.state[params[name]]["exp_avg_sq"].any()]
    assert underflowed and all(optimizer.state[params[name]]["exp_avg"].any() for name in underflowed)


def test_fp16_moves_other_weights_than_fp32_from_the_same_start(tmp_path):
    """The switch changes training: one step from the same weights and gradients differs, and fp32's moments
    never underflow where fp16's do."""
    steps = {}
    for dtype in ("fp32", "fp16"):
        torch.manual_seed(0)
        module, optimizer, scheduler = parity_module(tmp_path, dtype)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            set_gradients(module, generator)
            optimizer.step()
            scheduler.step()
        steps[dtype] = {name: param.detach().float() for name, param in module.named_parameters()}
        if dtype == "fp32":
            assert all(state["exp_avg_sq"].all() for state in optimizer.state.values())
    fp16 = [name for name in steps["fp16"] if FP16_NAMES.match(name)]
    assert any(not torch.equal(steps["fp16"][name], steps["fp32"][name]) for name in fp16)


def test_only_the_layers_convert_weights_casts_are_fp16(tmp_path):
    module, _, _ = parity_module(tmp_path)
    dtypes = {name: param.dtype for name, param in module.named_parameters()}
    expected_fp16 = {name for name in dtypes if FP16_NAMES.match(name)}
    assert expected_fp16 and {name for name, dtype in dtypes.items() if dtype == torch.float16} == expected_fp16
    fp32 = {name for name, dtype in dtypes.items() if dtype == torch.float32}
    for kept in ("ln_", "token_embedding", "positional_embedding", "class_embedding", "logit_scale"):
        assert any(kept in name for name in fp32) and not any(kept in name for name in expected_fp16), kept
    assert all(name in fp32 for name in dtypes if name.startswith("head."))  # the head trains in fp32
    assert set(dtypes.values()) == {torch.float16, torch.float32}


def test_fp16_clip_computes_in_fp16_with_fp32_layernorms_and_gives_the_head_fp32(tmp_path):
    module, _, _ = parity_module(tmp_path)
    ln_pre = module.backbone.clip.visual.ln_pre
    seen = {}
    ln_pre.register_forward_hook(lambda layer, inputs, output: seen.update(input=inputs[0], output=output))
    frames = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    features = module.frame_features(frames, mask)
    # the reference's LayerNorm: fp16 in, computed in fp32 with the fp32 affine, fp16 out; every LayerNorm is the
    # casting one, as a CPU kernel gives mixed-dtype layer_norm the same result and cannot tell them apart here
    layers = [layer for layer in module.backbone.clip.modules() if isinstance(layer, torch.nn.LayerNorm)]
    assert layers and all(type(layer) is LayerNormFp32 for layer in layers)
    assert seen["input"].dtype == seen["output"].dtype == torch.float16
    expected = F.layer_norm(seen["input"].float(), ln_pre.normalized_shape, ln_pre.weight, ln_pre.bias, ln_pre.eps)
    assert ln_pre.weight.dtype == torch.float32 and torch.equal(seen["output"], expected.half())
    assert features.frames.dtype == torch.float32 and features.frames[0, 2].eq(0).all()  # padded slot: zeros
    tokens = torch.tensor([[49406, 320, 49407, 0], [49406, 320, 321, 49407]])
    text = module.text_features(tokens)
    assert text.sentence.dtype == text.tokens.dtype == torch.float32
    scores = module.head.similarity(module.head.encode_text(text), module.head.encode_video(features))
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    module.scaled(scores).sum().backward()  # gradients reach the fp16 weights in their dtype
    conv1 = module.backbone.clip.visual.conv1.weight
    assert conv1.grad is not None and conv1.grad.dtype == torch.float16 and conv1.grad.any()


def test_the_fp32_default_leaves_clip_as_it_was(tmp_path):
    module = build_module(compose_train(PARITY, tmp_path, tmp_path))
    assert module.backbone.clip_param_dtype == "fp32"
    assert all(param.dtype == torch.float32 for param in module.parameters())
    assert all(
        type(layer) is LayerNorm for layer in module.backbone.clip.modules() if "LayerNorm" in type(layer).__name__
    )
    tokens = torch.tensor([[49406, 320, 49407, 0]])
    features = module.backbone.encode_text(tokens)
    assert module.backbone.features_for_head(features) is features  # no copy, no cast


def test_an_fp16_checkpoint_resumes_exactly(tmp_path):
    """Weights and moments saved with fp16 storage load (weights_only) into a new fp16 module in their dtypes,
    and the next step is the one the uninterrupted module takes."""
    module, optimizer, scheduler = parity_module(tmp_path)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        set_gradients(module, generator)
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(
        {"state_dict": module.state_dict(), "optimizer": optimizer.state_dict(), "lr": scheduler.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_optimizer, resumed_scheduler = parity_module(tmp_path)
    resumed.load_state_dict(saved["state_dict"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["lr"])
    for (name, param), (_, again) in zip(module.named_parameters(), resumed.named_parameters()):
        assert again.dtype == param.dtype and torch.equal(again, param), name
        state, state_again = optimizer.state[param], resumed_optimizer.state[again]
        assert state_again["exp_avg"].dtype == param.dtype and torch.equal(
            state_again["exp_avg_sq"], state["exp_avg_sq"]
        )
    grads = set_gradients(module, generator)
    for name, param in resumed.named_parameters():
        param.grad = grads[name].clone()
    for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed_scheduler)):
        opt.step()
        sched.step()
    for (name, param), (_, again) in zip(module.named_parameters(), resumed.named_parameters()):
        assert torch.equal(again, param), name


@pytest.mark.parametrize(
    "overrides, shown",
    [
        (["optim=adamw"], "but optim.name is 'adamw'"),
        (["trainer.precision=bf16-mixed"], "but trainer.precision is 'bf16-mixed'"),
        (["head.text_tower=lora_text"], "the text tower 'lora_text' adds fp32 weights inside CLIP"),
    ],
)
def test_fp16_storage_outside_the_reference_setting_is_refused(overrides, shown, tmp_path):
    from tvr.errors import ConfigError
    from tvr.validation import validate_train_config

    cfg = compose_train([*PARITY, "train.clip_param_dtype=fp16", *overrides], tmp_path, tmp_path)
    with pytest.raises(ConfigError) as error:
        validate_train_config(cfg)
    assert error.value.key == "train.clip_param_dtype" and shown in str(error.value)
    assert "train.clip_param_dtype=fp32" in str(error.value)  # the hint
