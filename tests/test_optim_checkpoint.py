"""Parameter groups, the warm-up cosine schedule, and atomic checkpoint files."""

import math

import pytest
import torch
from torch import nn

from tvr.checkpoint import AtomicCheckpointIO, load_checkpoint_file
from tvr.errors import CheckpointError
from tvr.optim import WarmupCosine, parameter_groups


def test_warmup_cosine_values():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110)
    assert schedule(0) == 0.0 and schedule(5) == 0.5 and schedule(10) == 1.0
    assert schedule(60) == pytest.approx(0.5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-12) and schedule(500) == 0.0
    assert schedule(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone.positional_embedding = nn.Parameter(torch.zeros(3, 4))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)
        self.head = nn.Linear(4, 4)


def test_parameter_groups_split_lr_and_weight_decay():
    model = Toy()
    groups = parameter_groups(
        list(model.named_parameters()),
        {id(p) for p in model.head.parameters()},
        backbone_lr=1e-6,
        head_lr=1e-4,
        weight_decay=0.2,
        no_decay_names=["positional_embedding"],
    )
    by_name = {g["name"]: g for g in groups}

    def ids(group):
        return {id(p) for p in by_name[group]["params"]}

    assert ids("head") == {id(model.head.weight)} and by_name["head"]["lr"] == 1e-4
    assert ids("head_no_decay") == {id(model.head.bias)} and by_name["head_no_decay"]["weight_decay"] == 0.0
    assert ids("backbone") == {id(model.backbone[0].weight)} and by_name["backbone"]["weight_decay"] == 0.2
    no_decay = ids("backbone_no_decay")
    assert {id(model.logit_scale), id(model.backbone[1].weight), id(model.backbone.positional_embedding)} <= no_decay
    assert all(id(model.frozen) not in ids(name) for name in by_name)


def test_clip4clip_rule_decays_everything_but_biases():
    model = Toy()
    groups = parameter_groups(
        list(model.named_parameters()), set(), 1e-7, 1e-4, 0.2, no_decay_1d=False, no_decay_names=["bias"]
    )
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    assert id(model.logit_scale) in decayed and id(model.backbone[1].weight) in decayed
    assert id(model.head.bias) not in decayed


def test_checkpoint_io_reads_with_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, tmp_path / "a.ckpt")
    assert io.load_checkpoint(tmp_path / "a.ckpt")["epoch"] == 3

    torch.save({"object": Toy}, tmp_path / "unsafe.ckpt")  # a pickled class: refused by weights_only
    with pytest.raises(Exception, match="[Ww]eights only"):
        io.load_checkpoint(tmp_path / "unsafe.ckpt")
    with pytest.raises(CheckpointError, match="missing.ckpt' not found"):
        load_checkpoint_file(tmp_path / "missing.ckpt")


def test_bertadam_step_has_no_bias_correction_and_clips_per_parameter():
    from tvr.optim import BertAdam

    param = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = BertAdam([param], lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, max_grad_norm=1.0)
    param.grad = torch.tensor([3.0, 4.0])  # norm 5 -> clipped to [0.6, 0.8]
    optimizer.step()
    g = torch.tensor([0.6, 0.8])
    m, v = 0.1 * g, 0.02 * g * g  # no division by (1 - beta^t)
    expected = torch.tensor([1.0, -2.0]) - 0.1 * (m / (v.sqrt() + 1e-6) + 0.2 * torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(param.detach(), expected)


def test_clip4clip_schedule_values():
    from tvr.optim import Clip4ClipWarmupCosine

    schedule = Clip4ClipWarmupCosine(warmup=0.1, total_steps=1000)
    assert schedule(0) == 0.0 and schedule(50) == pytest.approx(0.5)
    assert schedule(99) == pytest.approx(0.99) and schedule(100) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.1))
    )  # ~0.976 jump
    assert schedule(500) == pytest.approx(0.5) and schedule(1000) == pytest.approx(0.0, abs=1e-12)
    assert schedule(1500) == pytest.approx(0.5)  # past t_total it rises again (GLSCL's 5-epoch t_total)


def test_clip4clip_freeze_rule_freezes_exactly_the_embeddings_at_zero():
    from tvr.models.backbone import CLIPBackbone

    backbone = CLIPBackbone("tvr-tiny")
    frozen = backbone.freeze_like_clip4clip(0)
    assert sorted(frozen) == sorted(
        [
            "positional_embedding",
            "token_embedding.weight",
            "visual.class_embedding",
            "visual.positional_embedding",
            "visual.conv1.weight",
            "visual.ln_pre.weight",
            "visual.ln_pre.bias",
        ]
    )
    deeper = CLIPBackbone("tvr-tiny").freeze_like_clip4clip(1)
    assert (
        "visual.transformer.resblocks.0.attn.in_proj_weight" in deeper
        and "transformer.resblocks.0.ln_1.weight" in deeper
    )
    assert not any("resblocks.1." in name for name in deeper)
