"""Padded frame slots: what the backbone puts there (``backbone.padded_frames``), which heads depend on it,
and GLSCL scored end to end as its reference scores padded videos.

The GLSCL reference encodes every frame slot with CLIP, the zero-filled padded ones included, and its
head attends to all of them; ``encoded_blank`` must reproduce that, ``zeros`` (tvr's default) does not.
"""

import pytest
import torch

from conftest import REPO_ROOT, compose_train
from test_head_contract import HEAD_OPTIONS, make_head
from tvr.lit_module import RetrievalModule
from tvr.models.backbone import CLIPBackbone, FrameFeatures
from tvr.models.heads import create_head, list_heads

SOT, EOT = 49406, 49407
LENGTHS = (6, 4, 2, 1)  # real frames per video; 6 slots each
NUM_FRAMES = 6


def tiny_backbone(padded_frames: str) -> CLIPBackbone:
    torch.manual_seed(0)  # the same random weights for every mode
    return CLIPBackbone("tvr-tiny", padded_frames=padded_frames).eval()


def padded_clips(lengths=LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frames ``[B, T, 3, 32, 32]`` with zeros in padded slots, as ``ClipReader`` pads them."""
    mask = torch.arange(NUM_FRAMES)[None, :] < torch.tensor(lengths)[:, None]
    frames = torch.randn(len(lengths), NUM_FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return frames * mask[..., None, None, None], mask


def captions(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, 12, dtype=torch.long)
    for row in range(count):
        length = int(torch.randint(3, 11, (), generator=generator))
        ids[row, 0], ids[row, 1:length] = SOT, torch.randint(1, 40000, (length - 1,), generator=generator)
        ids[row, length] = EOT
    return ids


def reference_frame_features(backbone: CLIPBackbone, frames: torch.Tensor, mask: torch.Tensor) -> FrameFeatures:
    """The reference pipeline: every slot, padded or not, through open_clip's own image encoder."""
    encoded = backbone.clip.encode_image(frames.flatten(0, 1))
    return FrameFeatures(encoded.unflatten(0, frames.shape[:2]), mask)


def glscl_scores(head, backbone: CLIPBackbone, tokens: torch.Tensor, video: FrameFeatures) -> dict[str, torch.Tensor]:
    text_repr, video_repr = head.encode_text(backbone.encode_text(tokens)), head.encode_video(video)
    return {
        "S": head.similarity(text_repr, video_repr),
        "S_global": head.global_similarity(text_repr, video_repr),
        "S_local": head.local_similarity(text_repr, video_repr),
    }


@pytest.mark.parametrize("padded_frames, matches_reference", [("encoded_blank", True), ("zeros", False)])
def test_glscl_scores_padded_videos_as_the_reference_only_with_encoded_blank(padded_frames, matches_reference):
    backbone, head = tiny_backbone(padded_frames), make_head("glscl").eval()
    frames, mask = padded_clips()
    tokens = captions(5)
    with torch.no_grad():
        ours = glscl_scores(head, backbone, tokens, backbone.encode_frames(frames, mask))
        reference = glscl_scores(head, backbone, tokens, reference_frame_features(backbone, frames, mask))
    # S_global agrees either way: padded frames only change the GIM softmax's normaliser, which scales the
    # pooled vector, and the cosine divides the scale out. The decoder's memory (S_local) is what differs.
    torch.testing.assert_close(ours["S_global"], reference["S_global"], atol=1e-5, rtol=0)
    for name in ("S_local", "S"):
        if matches_reference:
            torch.testing.assert_close(ours[name], reference[name], atol=1e-5, rtol=0, msg=name)
        else:
            differs = (ours[name] - reference[name]).abs().amax(dim=0) > 1e-2
            assert differs.tolist() == [False, True, True, True], name  # every padded video, and only those


@pytest.mark.slow
def test_encoded_blank_gives_the_reference_gradients():
    """One blank encoding broadcast into every padded slot trains CLIP as encoding each slot does."""
    backbone, head = tiny_backbone("encoded_blank"), make_head("glscl").eval()
    frames, mask = padded_clips()
    tokens = captions(4)
    weights = torch.randn(4, len(LENGTHS), generator=torch.Generator().manual_seed(1))
    gradients = []
    for video_features in (backbone.encode_frames, lambda f, m: reference_frame_features(backbone, f, m)):
        backbone.zero_grad()
        scores = glscl_scores(head, backbone, tokens, video_features(frames, mask))["S"]
        (scores * weights).sum().backward()
        gradients.append({name: p.grad.clone() for name, p in backbone.named_parameters() if p.grad is not None})
    ours, reference = gradients
    assert ours.keys() == reference.keys() and "clip.visual.conv1.weight" in ours
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)


# Which videos' scores change with what the padded slots hold (videos: full, two partly padded, one with
# no real frame). X-Pool masks padded frames, but a video with no real frame has only masked logits, so
# its softmax spreads uniformly over the padded slots; without the mask it attends to them like GLSCL.
PADDED_FEATURE_DEPENDENCE = [
    ("meanpool", {}, set()),
    ("seqtransf", {}, set()),
    ("xpool", {}, {3}),
    ("xpool", {"mask_padded_frames": False}, {1, 2, 3}),
    ("glscl", {}, {1, 2, 3}),
    # the head pools the tower's per-frame CLS vectors like meanP; its tower merges every slot, which is why
    # TempMe's sampler never pads (the tower declares needs_full_clips; start-up validation enforces it)
    ("tempme", {}, set()),
    # HBI ranks on the entity level, which masks padded frames out of the WTI weights and the word x frame map
    ("hbi", {}, set()),
    ("hbi_estimator", {}, set()),
    # UCoFiA reproduces its reference (spec Q5): the sentence-frame and patch-word levels read every frame slot
    ("ucofia", {"max_frames": NUM_FRAMES, "max_words": 12}, {1, 2, 3}),
    ("ucofia", {"max_frames": NUM_FRAMES, "max_words": 12, "mask_padding": True}, set()),
    # DRL's scores mask padded frames in every interaction (only CDCR's padded argmax reads them, Q3)
    ("drl", {}, set()),
    ("drl", {"interaction": "ti", "cdcr": 2}, set()),
    ("drl", {"interaction": "dp", "cdcr": 1}, set()),
    ("drl", {"interaction": "xti", "cdcr": 0}, set()),
    # mean pooling of the tower's per-frame vectors, as TempMe's; its tower switches prompts across every slot
    # of a group, which is why its samplers repeat frames rather than pad (start-up validation enforces it)
    ("prompt_switch", {}, set()),
    # DiffusionRet's stage 1 is HBI's entity-level WTI; its second stage's frame pooling does read padded slots
    # (Q9, pool_renorm=false), which tests/test_diffusionret_modules.py checks on the generators
    ("diffusionret", {}, set()),
]


def test_the_dependence_table_covers_every_registered_head():
    assert {name for name, _, _ in PADDED_FEATURE_DEPENDENCE} == set(list_heads())


@pytest.mark.parametrize("name, options, dependent_videos", PADDED_FEATURE_DEPENDENCE)
def test_which_videos_depend_on_padded_frame_features(name, options, dependent_videos):
    frames, mask = padded_clips(lengths=(6, 4, 1, 0))
    tokens = captions(5)
    torch.manual_seed(0)
    head = create_head(name, embed_dim=64, **{**HEAD_OPTIONS.get(name, {}), **options}).eval()
    if hasattr(head, "bind_logit_scale"):
        head.bind_logit_scale(torch.nn.Parameter(torch.tensor(2.0)))
    with torch.no_grad():
        features = {
            mode: tiny_backbone(mode).encode_frames(frames, mask, with_patches=head.reads_tokens)
            for mode in ("zeros", "encoded_blank")
        }
        noise = features["zeros"].frames.clone()
        noise[~mask] = 10 * torch.randn(int((~mask).sum()), noise.shape[-1], generator=torch.Generator().manual_seed(2))
        text = tiny_backbone("zeros").encode_text(tokens)
        scores = [
            head.similarity(head.encode_text(text), head.encode_video(FrameFeatures(video, mask, patches=patches)))
            for video, patches in (
                (features["zeros"].frames, features["zeros"].patches),
                (features["encoded_blank"].frames, features["encoded_blank"].patches),
                (noise, features["zeros"].patches),
            )
        ]
    changed = set()
    for other in scores[1:]:
        changed |= {
            video
            for video in range(len(mask))
            if not torch.allclose(scores[0][:, video], other[:, video], atol=1e-6, rtol=0)
        }
    assert changed == dependent_videos
    assert all(torch.isfinite(matrix).all() for matrix in scores)  # a video with no real frame too


def test_glscl_global_pooling_divides_by_the_exact_norm():
    """A short video whose padded frame takes the GIM softmax pools a vector of norm < 1e-12: the
    reference still makes it a unit vector (F.normalize's eps of 1e-12 shrinks the cosine ~100-fold)."""
    head = make_head("glscl").eval()
    generator = torch.Generator().manual_seed(3)
    cls = torch.randn(1, 64, generator=generator)
    real_frame = cls[0] + torch.randn(64, generator=generator)
    padded_frame = real_frame + cls[0] * 35 * head.gim_temperature / cls.square().sum()  # GIM logit +35
    video_repr = {"video": torch.stack([real_frame, padded_frame])[None], "mask": torch.tensor([[1.0, 0.0]])}
    weights = (
        torch.einsum("td,vfd->tvf", cls, video_repr["video"]).div(head.gim_temperature).softmax(-1) * video_repr["mask"]
    )
    pooled = torch.einsum("tvf,vfd->tvd", weights, video_repr["video"])  # the reference's GIM, verbatim
    assert 0 < pooled.norm() < 1e-12
    reference = torch.einsum(
        "td,tvd->tv", cls / cls.norm(dim=-1, keepdim=True), pooled / pooled.norm(dim=-1, keepdim=True)
    )
    ours = head.global_similarity({"cls": cls}, video_repr)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    cosine_with_the_real_frame = torch.cosine_similarity(cls[0], real_frame, dim=0)
    assert cosine_with_the_real_frame > 0.5
    torch.testing.assert_close(ours[0, 0], cosine_with_the_real_frame, atol=1e-6, rtol=0)


def test_glscl_video_without_real_frames_scores_zero_globally_where_the_reference_gives_nan():
    head = make_head("glscl").eval()
    cls = torch.randn(2, 64, requires_grad=True)
    video_repr = {"video": torch.randn(1, 3, 64), "mask": torch.zeros(1, 3)}
    scores = head.global_similarity({"cls": cls}, video_repr)
    assert torch.equal(scores, torch.zeros(2, 1))
    scores.sum().backward()
    assert torch.isfinite(cls.grad).all()


@pytest.mark.parametrize("saved_mode, restored_mode", [("encoded_blank", "encoded_blank"), (None, "zeros")])
def test_checkpoints_keep_the_padded_frame_mode_and_older_ones_load_with_zeros(saved_mode, restored_mode):
    """A checkpoint's hyper_parameters rebuild its module; one written before the option existed has no
    ``padded_frames`` among the backbone's kwargs and must still load."""
    module = RetrievalModule(
        backbone={"model_name": "tvr-tiny", "padded_frames": saved_mode or "encoded_blank"},
        head={"name": "glscl", **HEAD_OPTIONS["glscl"]},
        loss={"name": "infonce"},
        optim={},
        evaluation={},
        train={},
    )
    hyper_parameters = {**module.hparams, "backbone": dict(module.hparams["backbone"])}
    if saved_mode is None:
        del hyper_parameters["backbone"]["padded_frames"]
    restored = RetrievalModule(**hyper_parameters)
    restored.load_state_dict(module.state_dict(), strict=True)
    assert restored.backbone.padded_frames == restored_mode


def recipes() -> list[str]:
    return sorted(path.stem for path in (REPO_ROOT / "conf" / "experiment").glob("[!_]*.yaml"))


@pytest.mark.parametrize("recipe", recipes())
def test_drl_recipes_encode_padded_frames_like_their_references_and_others_keep_zeros(recipe, tmp_path):
    """GLSCL, HBI, DRL, UCoFiA and DiffusionRet encode their zero-filled padded frames with CLIP (their readers
    pad; TempMe's never does)."""
    cfg = compose_train([f"experiment={recipe}"], tmp_path, tmp_path / "run")
    encodes_padding = cfg.head.name in ("glscl", "hbi", "hbi_estimator", "drl", "ucofia", "diffusionret")
    assert cfg.backbone.padded_frames == ("encoded_blank" if encodes_padding else "zeros")


def test_default_run_keeps_zeros(tmp_path):
    assert compose_train([], tmp_path, tmp_path / "run").backbone.padded_frames == "zeros"
