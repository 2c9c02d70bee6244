"""The open_clip backbone: encoders, and loading CLIP weights from every supported local layout."""

import copy

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.pretrained import get_pretrained_cfg
from safetensors.torch import save_file
from torch import nn

from tvr.models.backbone import (
    INLINE_ARCHITECTURES,
    PADDED_FRAME_MODES,
    CLIPBackbone,
    PretrainedTagError,
    resolve_preprocessing,
)
from tvr.models.weights import WeightsError, read_clip_weights

SOT, EOT = 49406, 49407
GELU_ARCH = copy.deepcopy(INLINE_ARCHITECTURES["tvr-tiny"]) | {"quick_gelu": False}


def tokens(length: int = 16, eot_at: int = 9, batch: int = 3) -> torch.Tensor:
    ids = torch.randint(1, 40000, (batch, length), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = SOT
    ids[:, eot_at] = EOT
    ids[:, eot_at + 1 :] = 0
    return ids


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPBackbone("tvr-tiny").eval()


def test_sentence_embedding_is_the_eot_feature_and_ignores_padding_length(backbone):
    short = tokens(length=16)
    long = torch.zeros(3, 77, dtype=torch.long)
    long[:, :16] = short
    with torch.no_grad():
        ours = backbone.encode_text(short)
        reference = backbone.clip.encode_text(long)  # open_clip's own path on the 77-token context
    torch.testing.assert_close(ours.sentence, reference, atol=1e-5, rtol=0)
    assert ours.tokens.shape == (3, 16, 64)
    assert ours.mask.sum(dim=1).tolist() == [10, 10, 10]
    torch.testing.assert_close(ours.tokens[:, 9], ours.sentence)


def test_frames_skip_padding_and_match_image_encoder(backbone):
    frames = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = backbone.encode_frames(frames, mask, with_patches=True)
        reference = backbone.clip.encode_image(frames.flatten(0, 1)).view(2, 4, -1)
    torch.testing.assert_close(out.frames[mask], reference[mask], atol=1e-5, rtol=0)
    assert (out.frames[~mask] == 0).all()
    assert out.patches.shape == (2, 4, 16, 64)


def record_tower_calls(backbone: CLIPBackbone, monkeypatch) -> list[int]:
    """How many images each call of the vision tower encodes, from now on."""
    calls = []
    encode = backbone.encode_images

    def recording(images, with_patches=False):
        calls.append(images.shape[0])
        return encode(images, with_patches=with_patches)

    monkeypatch.setattr(backbone, "encode_images", recording)
    return calls


def test_encoded_blank_fills_padded_slots_with_one_blank_image_encoding(backbone, monkeypatch):
    blank_backbone = CLIPBackbone("tvr-tiny", padded_frames="encoded_blank").eval()
    blank_backbone.load_state_dict(backbone.state_dict())
    frames = torch.randn(2, 4, 3, 32, 32)  # padded slots hold noise here: only the all-zero image is encoded
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        blank_cls, blank_patches = backbone.encode_images(torch.zeros(1, 3, 32, 32), with_patches=True)
        zeros = backbone.encode_frames(frames, mask, with_patches=True)
        calls = record_tower_calls(blank_backbone, monkeypatch)
        out = blank_backbone.encode_frames(frames, mask, with_patches=True)
    assert calls == [int(mask.sum()) + 1]  # one tower call: the real frames and a single blank image
    torch.testing.assert_close(out.frames[mask], zeros.frames[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.patches[mask], zeros.patches[mask], atol=1e-5, rtol=0)
    padded = int((~mask).sum())
    torch.testing.assert_close(out.frames[~mask], blank_cls.expand(padded, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.patches[~mask], blank_patches.expand(padded, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded_frames", PADDED_FRAME_MODES)
def test_a_batch_without_real_frames_never_sends_zero_images_to_the_tower(backbone, padded_frames, monkeypatch):
    """E.g. an evaluation batch of unreadable videos: all-zero frames and an all-False mask."""
    model = CLIPBackbone("tvr-tiny", padded_frames=padded_frames).eval()
    model.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        blank_cls, blank_patches = model.encode_images(torch.zeros(1, 3, 32, 32), with_patches=True)
        calls = record_tower_calls(model, monkeypatch)
        out = model.encode_frames(torch.zeros(2, 3, 3, 32, 32), torch.zeros(2, 3, dtype=torch.bool), with_patches=True)
    assert 0 not in calls  # open_clip fails on an empty batch
    assert out.frames.shape == (2, 3, 64) and out.patches.shape == (2, 3, 16, 64) and not out.mask.any()
    scale = 1.0 if padded_frames == "encoded_blank" else 0.0
    torch.testing.assert_close(out.frames, scale * blank_cls.expand(2, 3, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.patches, scale * blank_patches.expand(2, 3, -1, -1), atol=1e-5, rtol=0)


def test_unknown_padded_frames_mode_lists_choices():
    with pytest.raises(ValueError, match="valid choices: zeros, encoded_blank"):
        CLIPBackbone("tvr-tiny", padded_frames="repeat_last")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = CLIPBackbone("tvr-tiny")
    checkpointed = CLIPBackbone("tvr-tiny", grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    frames = torch.randn(2, 3, 3, 32, 32)
    for model in (plain, checkpointed):
        model.zero_grad()
        (model.encode_frames(frames).frames.square().sum() + model.encode_text(tokens()).sentence.sum()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match="valid choices: tvr-tiny, .*ViT-B-32"):
        CLIPBackbone("ViT-X-99")


def test_open_clip_checkpoint_with_wrappers(tmp_path, backbone):
    path = tmp_path / "epoch_5.pt"
    torch.save({"epoch": 5, "state_dict": {f"module.{k}": v for k, v in backbone.clip.state_dict().items()}}, path)
    loaded = CLIPBackbone("tvr-tiny", weights=str(path))
    assert loaded.weights_source == "open_clip" and same_weights(loaded.clip, backbone.clip)


def test_hugging_face_cache_folder_with_open_clip_safetensors(tmp_path, backbone):
    snapshot = tmp_path / "models--someone--tvr-tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in backbone.clip.state_dict().items()}, snapshot / "open_clip_model.safetensors"
    )
    loaded = CLIPBackbone("tvr-tiny", weights=str(tmp_path / "models--someone--tvr-tiny"))
    assert same_weights(loaded.clip, backbone.clip)


def test_transformers_clip_folder_gives_the_same_features(tmp_path):
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
            eos_token_id=EOT,
            bos_token_id=SOT,
            pad_token_id=1,
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
    torch.manual_seed(0)
    hf_model = transformers.CLIPModel(config).eval()
    hf_model.save_pretrained(tmp_path / "clip-hf")
    ours = CLIPBackbone(architecture=GELU_ARCH, weights=str(tmp_path / "clip-hf")).eval()
    assert ours.weights_source == "transformers" and ours.quick_gelu  # read from config.json's hidden_act
    ids, images = tokens(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hf_text = hf_model.get_text_features(input_ids=ids, attention_mask=(ids != 0).long())
        hf_image = hf_model.get_image_features(pixel_values=images)
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
        torch.testing.assert_close(ours.encode_text(ids).sentence, hf_text, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_images(images)[0], hf_image, atol=1e-5, rtol=0)


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_openai_torchscript(state_dict: dict, path) -> None:
    """A TorchScript archive laid out like OpenAI's ViT-B-32.pt: fp16 weights + 3 int entries."""
    root = _Holder()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.script(root).save(str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file:UserWarning")
def test_openai_torchscript_forces_quick_gelu(tmp_path, backbone):
    weights = {k: v.half() for k, v in backbone.clip.state_dict().items()}
    weights.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "ViT-B-32.pt"
    write_openai_torchscript(weights, path)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)  # why this format needs its own path
    loaded = CLIPBackbone(architecture=GELU_ARCH, weights=str(path))
    assert loaded.weights_source == "openai_torchscript" and loaded.quick_gelu
    expected = {k: v.float() for k, v in weights.items() if k in loaded.clip.state_dict()}
    assert all(torch.equal(loaded.clip.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(WeightsError, match="QuickGELU"):
        CLIPBackbone(architecture=GELU_ARCH, weights=str(path), quick_gelu=False)


@pytest.mark.parametrize(
    "make_file, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "weights_only=True"),
    ],
)
def test_bad_weights_files_fail_with_what_to_pass(tmp_path, make_file, message):
    path = tmp_path / "clip.pt"
    make_file(path)
    with pytest.raises(WeightsError, match=message) as error:
        read_clip_weights(path)
    assert "backbone.weights" in str(error.value)


def test_weights_for_another_architecture_are_refused(tmp_path):
    other = CLIPBackbone(architecture=copy.deepcopy(INLINE_ARCHITECTURES["tvr-tiny"]) | {"embed_dim": 32})
    path = tmp_path / "other.pt"
    torch.save(other.clip.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit backbone 'tvr-tiny'.*shape mismatch"):
        CLIPBackbone("tvr-tiny", weights=str(path))


def test_folder_without_weights_lists_its_content(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(WeightsError, match="README.md"):
        read_clip_weights(tmp_path)


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"])
def test_published_architectures_build_offline_with_random_weights(name):
    model = CLIPBackbone(name)
    assert (model.embed_dim, model.preprocessing.image_size, model.context_length, model.quick_gelu) == (
        512,
        224,
        77,
        True,
    )
    with torch.no_grad():
        assert model.encode_text(tokens(length=32)).sentence.shape == (3, 512)


def test_padding_tokens_attend_to_real_tokens_only(backbone):
    # Give every padding position the same positional embedding: if padding attends to the real tokens
    # only (the DRL rule), all padding outputs are then identical; with a causal mask alone, position i
    # also attends to the padding before it, so they differ.
    ids = tokens(length=16, eot_at=9)
    models = {}
    for padding_mask in (True, False):
        model = CLIPBackbone("tvr-tiny", text_padding_mask=padding_mask).eval()
        model.load_state_dict(backbone.state_dict())
        with torch.no_grad():
            model.clip.positional_embedding[10:16] = model.clip.positional_embedding[10]
        models[padding_mask] = model
    with torch.no_grad():
        drl, causal = models[True].encode_text(ids), models[False].encode_text(ids)
    padding = drl.tokens[:, 10:16]
    torch.testing.assert_close(padding, padding[:, :1].expand_as(padding), atol=1e-5, rtol=0)
    assert not torch.allclose(causal.tokens[:, 10], causal.tokens[:, 15], atol=1e-3)
    torch.testing.assert_close(
        drl.tokens[:, :10], causal.tokens[:, :10], atol=1e-5, rtol=0
    )  # real tokens and EOT unchanged


def pretrained_rule(model_name: str, tag: str) -> tuple:
    config = get_pretrained_cfg(model_name, tag)
    return tuple(config[name] for name in ("mean", "std", "interpolation", "resize_mode"))


def rule(preprocessing) -> tuple:
    return preprocessing.mean, preprocessing.std, preprocessing.interpolation, preprocessing.resize_mode


def test_the_backbone_owns_its_preprocessing_from_its_architecture_and_open_clips_pretrained_configs():
    tiny = CLIPBackbone("tvr-tiny").preprocessing
    assert tiny == resolve_preprocessing("tvr-tiny")  # what validation resolves from the config alone
    # an inline architecture has no pretrained config: open_clip's defaults, OpenAI CLIP's
    assert tiny.image_size == 32 and rule(tiny) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, "bicubic", "shortest")
    wide = copy.deepcopy(INLINE_ARCHITECTURES["tvr-tiny"])
    wide["vision_cfg"]["image_size"] = 48
    assert resolve_preprocessing("mine", wide).image_size == 48 == CLIPBackbone("mine", wide).preprocessing.image_size
    wide["vision_cfg"]["image_size"] = [48, 64]
    with pytest.raises(ValueError, match="48x64 px input; tvr feeds square frames"):
        resolve_preprocessing("mine", wide)
    # open_clip models: the rule their pretrained weights were trained with (SigLIP squashes, mean/std 0.5)
    assert rule(resolve_preprocessing("ViT-B-32-quickgelu")) == pretrained_rule("ViT-B-32-quickgelu", "openai")
    assert rule(resolve_preprocessing("ViT-B-16-SigLIP")) == pretrained_rule("ViT-B-16-SigLIP", "webli")
    assert resolve_preprocessing("ViT-B-16-SigLIP").resize_mode == "squash"


def test_a_model_whose_pretrained_weights_differ_needs_their_tag():
    with pytest.raises(PretrainedTagError, match="'ViT-L-14' are preprocessed differently .*backbone.pretrained=<tag>"):
        resolve_preprocessing("ViT-L-14")
    for tag in ("openai", "laion2b_s32b_b82k"):
        assert rule(resolve_preprocessing("ViT-L-14", pretrained=tag)) == pretrained_rule("ViT-L-14", tag)
    assert resolve_preprocessing("ViT-L-14", pretrained="openai") != resolve_preprocessing(
        "ViT-L-14", pretrained="laion2b_s32b_b82k"
    )
    with pytest.raises(
        PretrainedTagError, match="'laion' is not a pretrained tag of open_clip's 'ViT-B-32'; its tags: openai"
    ):
        resolve_preprocessing("ViT-B-32", pretrained="laion")
    with pytest.raises(PretrainedTagError, match="it has none"):
        resolve_preprocessing("tvr-tiny", pretrained="openai")
