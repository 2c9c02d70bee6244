"""Importing checkpoints released by the reference implementations, and strict checkpoint loading."""

import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, REPO_ROOT, SMALL_OVERRIDES, compose_train
from tvr.checkpoint import CheckpointMismatchError, load_checkpoint_file, load_state_dict_checked, load_tvr_checkpoint
from tvr.conversion import convert_checkpoint
from tvr.evaluate import evaluate
from tvr.models.backbone import CLIPBackbone, FrameFeatures, TextFeatures
from tvr.models.retriever import Retriever

GOLDEN = FIXTURES / "golden"


GOLDEN_CLIP4CLIP = torch.load(GOLDEN / "clip4clip_golden.pt", weights_only=True)


def clip4clip_release(path):
    """A CLIP4Clip-layout ``pytorch_model.bin``: CLIP (fp16, as CLIP4Clip trains it) under ``clip.`` + seqTransf."""
    torch.manual_seed(3)
    clip = CLIPBackbone("tvr-tiny").clip.state_dict()
    head = GOLDEN_CLIP4CLIP["state_dict"]
    torch.save({**{f"clip.{k}": v.half() for k, v in clip.items()}, **head}, path)
    return clip, head


def test_a_clip4clip_release_converts_and_evaluates(data_dir, tmp_path):
    clip, head = clip4clip_release(tmp_path / "pytorch_model.bin.4")
    target = tmp_path / "converted.ckpt"
    overrides = ["experiment=synthetic_seqtransf", f"paths.data_dir={data_dir}"] + SMALL_OVERRIDES
    assert convert_checkpoint(tmp_path / "pytorch_model.bin.4", target, overrides) == ([], [])
    state = load_tvr_checkpoint(target)["state_dict"]  # a converted checkpoint is a complete tvr checkpoint
    for key, value in clip.items():  # every CLIP weight, as the fp16 release holds it
        torch.testing.assert_close(state[f"backbone.clip.{key}"], value.half().float(), atol=0, rtol=0, msg=key)
    # the converted model scores CLIP4Clip's golden embeddings as the reference seqTransf did
    retriever = Retriever.from_checkpoint(target)
    with torch.no_grad():
        text = retriever.head.encode_text(TextFeatures(GOLDEN_CLIP4CLIP["text_embeds"], None, None))
        video = retriever.head.encode_video(
            FrameFeatures(GOLDEN_CLIP4CLIP["frame_embeds"], GOLDEN_CLIP4CLIP["video_mask"].bool())
        )
        logits = retriever.head.similarity(text, video) * GOLDEN_CLIP4CLIP["logit_scale_log"].exp()
    torch.testing.assert_close(logits, GOLDEN_CLIP4CLIP["logits_seqTransf"], atol=1e-5, rtol=0)
    cfg = compose_train(
        [f"ckpt_path={target}", "trainer.enable_progress_bar=false"], data_dir, tmp_path / "eval", config_name="eval"
    )
    result = evaluate(cfg)
    assert result["num_videos"] == 12 and set(result["t2v"]) >= {"R1", "MdR"}


def test_an_xpool_release_with_hugging_face_clip_converts(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=64,
    )
    hf_state = transformers.CLIPModel(config).state_dict()
    pool = torch.load(GOLDEN / "xpool_golden.pt", weights_only=True)["state_dict"]
    release = {
        "epoch": 3,
        "state_dict": {
            **{f"clip.{k}": v for k, v in hf_state.items()},
            **{f"pool_frames.{k}": v for k, v in pool.items()},
        },
    }
    torch.save(release, tmp_path / "model_best.pth")
    assert convert_checkpoint(tmp_path / "model_best.pth", tmp_path / "out.ckpt", ["head=xpool"]) == ([], [])
    state = load_checkpoint_file(tmp_path / "out.ckpt")["state_dict"]
    torch.testing.assert_close(state["head.cross_attn.q_proj.weight"], pool["cross_attn.q_proj.weight"])
    torch.testing.assert_close(state["backbone.clip.visual.proj"], hf_state["visual_projection.weight"].t())


def test_mismatched_checkpoints_are_refused_with_the_keys_named(tmp_path):
    clip, head = clip4clip_release(tmp_path / "full.bin")
    partial = torch.load(tmp_path / "full.bin", weights_only=True)
    partial.pop("transformerClip.resblocks.0.ln_1.weight")
    partial["weight_fc.0.weight"] = torch.zeros(2, 2)
    torch.save(partial, tmp_path / "partial.bin")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"1 missing keys \['head.temporal.blocks.0.ln_1.weight'\], 1 unexpected keys \['head.weight_fc.0.weight'\]",
    ):
        convert_checkpoint(tmp_path / "partial.bin", tmp_path / "out.ckpt", ["experiment=synthetic_seqtransf"])
    assert not (tmp_path / "out.ckpt").exists()
    missing, unexpected = convert_checkpoint(
        tmp_path / "partial.bin", tmp_path / "out.ckpt", ["experiment=synthetic_seqtransf"], allow_partial=True
    )
    assert missing == ["head.temporal.blocks.0.ln_1.weight"] and unexpected == ["head.weight_fc.0.weight"]
    assert (
        load_checkpoint_file(tmp_path / "out.ckpt")["converted_missing_keys"] == missing
    )  # held at their initial values
    reshaped = torch.load(tmp_path / "full.bin", weights_only=True)
    reshaped["frame_position_embeddings.weight"] = torch.zeros(32, 64)
    torch.save(reshaped, tmp_path / "reshaped.bin")
    with pytest.raises(
        CheckpointMismatchError, match=r"wrong shape: head.temporal.position_embedding.weight \(32, 64\) vs \(77, 64\)"
    ):
        convert_checkpoint(
            tmp_path / "reshaped.bin", tmp_path / "x.ckpt", ["experiment=synthetic_seqtransf"], allow_partial=True
        )


def test_a_glscl_release_drops_the_keys_its_forward_never_uses(tmp_path):
    torch.manual_seed(4)
    clip = CLIPBackbone("tvr-tiny").clip.state_dict()
    golden = torch.load(GOLDEN / "glscl_golden.pt", weights_only=True)["state_dict"]
    head = {k: v for k, v in golden.items() if not k.startswith("clip.")}
    unused = {
        "noun_queries": torch.zeros(4, 64),
        "weight_fc.0.weight": torch.zeros(256, 128),
        "weight_fc.2.bias": torch.zeros(1),
        "decoder_layer_noun.linear1.weight": torch.zeros(128, 64),
        "transformer_decoder_spatial.layers.0.norm1.weight": torch.ones(64),
    }
    torch.save({**{f"clip.{k}": v for k, v in clip.items()}, **head, **unused}, tmp_path / "pytorch_model.bin")
    overrides = [
        "experiment=synthetic_glscl",
        "head.temporal_layers=2",
        "head.temporal_heads=2",
        "head.num_queries=4",
        "head.decoder_heads=8",
        "head.decoder_ffn=128",
    ]
    assert convert_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "glscl.ckpt", overrides) == ([], [])
    state = load_checkpoint_file(tmp_path / "glscl.ckpt")["state_dict"]
    torch.testing.assert_close(state["head.queries"], golden["spatial_queries"])
    torch.testing.assert_close(
        state["head.decoder.layers.2.norm3.bias"], golden["transformer_decoder_noun.layers.2.norm3.bias"]
    )


def run_tool(*args):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_each_command_names_the_override_it_accepts(tmp_path):
    clip4clip_release(tmp_path / "full.bin")
    partial = torch.load(tmp_path / "full.bin", weights_only=True)
    partial.pop("transformerClip.resblocks.0.ln_1.weight")
    torch.save(partial, tmp_path / "partial.bin")
    refused = run_tool(tmp_path / "partial.bin", tmp_path / "out.ckpt", "experiment=synthetic_seqtransf")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "pass --allow-partial to tools/convert_checkpoint.py" in refused.stderr and "strict=false" not in refused.stderr
    )
    accepted = run_tool(
        tmp_path / "partial.bin", tmp_path / "out.ckpt", "experiment=synthetic_seqtransf", "--allow-partial"
    )
    assert (
        accepted.returncode == 0
        and "1 missing keys ['head.temporal.blocks.0.ln_1.weight'] (left at their initial" in accepted.stdout
    )
    with pytest.raises(
        CheckpointMismatchError, match="pass strict=false to load"
    ):  # tvr-eval's override, which it accepts
        load_state_dict_checked(torch.nn.Linear(2, 2), {"weight": torch.zeros(2, 2)})
