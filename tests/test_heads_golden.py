"""Fidelity: tvr's heads reproduce CLIP4Clip's own outputs (golden fixtures) after loading the
reference-named weights through tvr's public key mapping."""

import pytest
import torch

from conftest import FIXTURES
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.convert import convert_reference_state_dict, map_reference_head_keys
from tvr.models.heads import create_head

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
    reference = {f"clip.visual.proj": torch.zeros(2), **GOLDEN["state_dict"]}
    converted = convert_reference_state_dict("seqtransf", {f"module.{k}": v for k, v in reference.items()})
    assert "backbone.clip.visual.proj" in converted
    assert "head.position_embedding.weight" in converted
    assert "head.blocks.1.mlp.c_proj.weight" in converted
    assert not any(key.startswith(("clip.", "transformerClip", "frame_position")) for key in converted)


def test_unknown_head_name_lists_the_choices():
    with pytest.raises(KeyError, match="valid choices: meanpool, seqtransf"):
        map_reference_head_keys("tightTransf", {})
