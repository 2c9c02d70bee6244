"""Fidelity: tvr's heads reproduce CLIP4Clip's own outputs (golden fixtures) after loading the
reference-named weights through tvr's public key mapping."""

import pytest
import torch

from conftest import FIXTURES
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.convert import convert_reference_state_dict, map_reference_head_keys
from tvr.models.heads import create_head
from tvr.models.heads.base import LossContext
from tvr.models.losses import create_loss

GOLDEN = torch.load(FIXTURES / "golden" / "clip4clip_golden.pt", weights_only=True)


def _logits(head) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        text = head.encode_text(TextFeatures(GOLDEN["text_embeds"], None, None))
        video = head.encode_video(FrameFeatures(GOLDEN["frame_embeds"], GOLDEN["video_mask"].bool()))
        return head.similarity(text, video) * GOLDEN["logit_scale_log"].exp()


def test_meanpool_reproduces_clip4clip_meanP():
    head = create_head("meanpool", embed_dim=64)
    assert head.load_state_dict(map_reference_head_keys("meanpool", {}), strict=True)  # no parameters at all
    torch.testing.assert_close(_logits(head), GOLDEN["logits_meanP"], atol=1e-5, rtol=0)


def test_seqtransf_reproduces_clip4clip_seqTransf():
    head = create_head("seqtransf", embed_dim=64, layers=2, heads=2)
    head.load_state_dict(map_reference_head_keys("seqtransf", GOLDEN["state_dict"]), strict=True)
    logits = _logits(head)
    torch.testing.assert_close(logits, GOLDEN["logits_seqTransf"], atol=1e-5, rtol=0)
    # the golden videos 1 and 3 are padded: the test is only meaningful if padding changes something
    assert not torch.allclose(logits, _logits(create_head("seqtransf", embed_dim=64, layers=2, heads=2)), atol=1e-3)


def test_full_reference_state_dict_maps_onto_the_module_layout():
    reference = {"clip.visual.proj": torch.zeros(2), **GOLDEN["state_dict"]}
    converted = convert_reference_state_dict("seqtransf", {f"module.{k}": v for k, v in reference.items()})
    assert "backbone.clip.visual.proj" in converted
    assert "head.temporal.position_embedding.weight" in converted
    assert "head.temporal.blocks.1.mlp.c_proj.weight" in converted
    assert not any(key.startswith(("clip.", "transformerClip", "frame_position")) for key in converted)


def test_unknown_head_name_lists_the_choices():
    with pytest.raises(
        KeyError,
        match="valid choices: diffusionret, drl, glscl, hbi, hbi_estimator, meanpool, prompt_switch, seqtransf, tempme, ucofia, xpool",
    ):
        map_reference_head_keys("tightTransf", {})


XPOOL = torch.load(FIXTURES / "golden" / "xpool_golden.pt", weights_only=True)
GLSCL = torch.load(FIXTURES / "golden" / "glscl_golden.pt", weights_only=True)


@pytest.mark.parametrize("heads, suffix", [(1, ""), (4, "_heads4")])
def test_xpool_reproduces_the_reference_pooling(heads, suffix):
    head = create_head("xpool", embed_dim=64, num_heads=heads).eval()
    key = "state_dict" if heads == 1 else "state_dict_heads4"
    head.load_state_dict(
        map_reference_head_keys("xpool", {f"pool_frames.{k}": v for k, v in XPOOL[key].items()}), strict=True
    )
    text = head.encode_text(TextFeatures(XPOOL["text_embeds"], None, None))
    video = head.encode_video(FrameFeatures(XPOOL["video_embeds"], torch.ones(5, 12, dtype=torch.bool)))
    with torch.no_grad():
        torch.testing.assert_close(head.pooled(text, video), XPOOL[f"pooled{suffix}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(head.similarity(text, video), XPOOL[f"sims{suffix}"], atol=1e-5, rtol=0)
        if heads == 1:
            first5 = {k: v[:5] for k, v in text.items()}
            loss = create_loss("infonce")(head.similarity(first5, video) * XPOOL["logit_scale_log"].exp())
            torch.testing.assert_close(loss, XPOOL["loss_first5"], atol=1e-5, rtol=0)


def test_xpool_identity_initialisation_closed_form():
    head = create_head("xpool", embed_dim=64).eval()
    text, frames = XPOOL["text_embeds"][:2], XPOOL["video_embeds"][:3]

    def ln(x):
        return torch.nn.functional.layer_norm(x, (64,))

    weights = torch.einsum("td,vfd->vtf", ln(text), ln(frames)).div(64**0.5).softmax(dim=-1)
    expected = ln(2 * ln(torch.einsum("vtf,vfd->vtd", weights, ln(frames))))  # z = LN3(2 LN2(sum a LN1(x)))
    with torch.no_grad():
        pooled = head.pooled(
            head.encode_text(TextFeatures(text, None, None)),
            head.encode_video(FrameFeatures(frames, torch.ones(3, 12, dtype=torch.bool))),
        )
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)


def _glscl_head():
    head = create_head(
        "glscl",
        embed_dim=64,
        temporal_layers=2,
        temporal_heads=2,
        num_queries=4,
        decoder_layers=3,
        decoder_heads=8,
        decoder_ffn=128,
        decoder_dropout=0.0,
        gim_temperature=3.0,
        idl_alpha=0.01,
        icl_beta=0.005,
    )
    reference = {k: v for k, v in GLSCL["state_dict"].items() if not k.startswith("clip.")}
    reference["noun_queries"] = torch.zeros(4, 64)  # in real checkpoints, unused by the forward pass
    head.load_state_dict(map_reference_head_keys("glscl", reference), strict=True)
    return head


def _glscl_inputs(head, prefix):
    text = head.encode_text(
        TextFeatures(GLSCL[f"{prefix}_cls"], GLSCL[f"{prefix}_text_feat"], GLSCL[f"{prefix}_text_mask"].bool())
    )
    video = head.encode_video(FrameFeatures(GLSCL[f"{prefix}_frame_feat"], GLSCL[f"{prefix}_video_mask"].bool()))
    return text, video


def test_glscl_reproduces_the_reference_scores():
    head = _glscl_head().eval()
    with torch.no_grad():
        text, video = _glscl_inputs(head, "eval")
        torch.testing.assert_close(video["video"], GLSCL["eval_video_feat"].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(video["concepts"], GLSCL["eval_video_concepts"].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(text["concepts"], GLSCL["eval_text_concepts"].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            head.global_similarity(text, video), GLSCL["eval_sim_global"].float(), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            head.local_similarity(text, video), GLSCL["eval_sim_local"].float(), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(head.similarity(text, video), GLSCL["eval_sim"].float(), atol=1e-5, rtol=0)


def test_glscl_reproduces_the_reference_training_losses():
    head = _glscl_head().train()  # dropout is 0, as in the fixture
    text, video = _glscl_inputs(head, "train")
    sims = head.similarity(text, video)
    torch.testing.assert_close(sims, GLSCL["train_sim"].float(), atol=1e-5, rtol=0)
    contrastive = create_loss("infonce")(sims * GLSCL["logit_scale_log"].exp())
    extras = head.extra_losses(text, video, LossContext(GLSCL["logit_scale_log"], create_loss("infonce")))
    torch.testing.assert_close(contrastive, GLSCL["train_loss_contrastive"].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(extras["idl"], GLSCL["train_loss_Inter_Diversity"].float(), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(extras["icl"], GLSCL["train_loss_Intra_Consistency"].float(), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(
        contrastive + extras["idl"] + extras["icl"], GLSCL["train_loss_total"].float(), atol=1e-5, rtol=0
    )
    # the ICL batch-normalised variant differs (B=5 vs K=4), and so does masking the decoder memory
    head.icl_diag_norm = "batch"
    assert not torch.allclose(
        head.extra_losses(text, video, LossContext(GLSCL["logit_scale_log"], create_loss("infonce")))["icl"],
        extras["icl"],
    )
