"""X-Pool's ablation switch ``head.pooling=text|uniform``: the default is the reference (text-conditioned
attention); ``uniform`` averages the real frames with equal weights and keeps every other layer."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tvr.config import config_dir
from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads import create_head

D, T = 64, 6


def inputs(num_texts: int = 5, num_videos: int = 3):
    generator = torch.Generator().manual_seed(3)
    text = TextFeatures(torch.randn(num_texts, D, generator=generator), None, None)
    mask = torch.ones(num_videos, T, dtype=torch.bool)
    mask[1, 4:] = False
    frames = torch.randn(num_videos, T, D, generator=generator) * mask[..., None]
    return text, FrameFeatures(frames, mask)


def pooled(head, text, video):
    return head.pooled(head.encode_text(text), head.encode_video(video))


def test_default_pooling_is_the_reference_text_conditioned_attention():
    assert create_head("xpool", embed_dim=D).pooling == "text"
    assert OmegaConf.load(Path(config_dir()) / "head" / "xpool.yaml").pooling == "text"
    head = create_head("xpool", embed_dim=D).eval()
    text, video = inputs()
    z = pooled(head, text, video)
    assert not torch.allclose(z[:, 0], z[:, 1], atol=1e-4)  # the pooled video depends on the text


@pytest.mark.parametrize("num_heads", [1, 4])
def test_uniform_pooling_is_the_mean_of_the_real_frames(num_heads):
    head = create_head("xpool", embed_dim=D, num_heads=num_heads, pooling="uniform").eval()
    text, video = inputs()
    z = pooled(head, text, video)
    # identity-initialised projections, eval mode: z = LN3(2 LN2(mean over real frames of LN1(x_f)))
    ln1 = F.layer_norm(video.frames, (D,))
    mean = (ln1 * video.mask[..., None]).sum(1) / video.mask.sum(1, keepdim=True)
    expected = F.layer_norm(2 * F.layer_norm(mean, (D,)), (D,))
    for t in range(z.shape[1]):
        torch.testing.assert_close(z[:, t], expected, atol=1e-5, rtol=0)
    weights = head.attention(head.encode_text(text), head.encode_video(video))
    assert weights.shape == (3, 5, num_heads, T)
    torch.testing.assert_close(weights[1, 0, 0], torch.tensor([0.25] * 4 + [0.0] * 2))


def test_uniform_pooling_trains_every_layer_but_the_attention_projections():
    head = create_head("xpool", embed_dim=D, pooling="uniform").train()
    text, video = inputs()
    text.sentence.requires_grad_(True)
    sims = head.similarity(head.encode_text(text), head.encode_video(video))
    (sims * torch.randn_like(sims)).sum().backward()
    unused = {
        "cross_attn.q_proj.weight",
        "cross_attn.q_proj.bias",
        "cross_attn.k_proj.weight",
        "cross_attn.k_proj.bias",
    }
    for name, param in head.named_parameters():
        assert (param.grad is None) == (name in unused), name


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ValueError, match="valid choices: text, uniform"):
        create_head("xpool", embed_dim=D, pooling="mean")
