"""Evaluation that scales: tiles bounded by a memory budget, and which heads a vector index can hold."""

import pytest
import torch

from tvr.models.backbone import FrameFeatures, TextFeatures
from tvr.models.heads import create_head
from tvr.models.similarity import tile_shape, tiled_similarity
from tvr.search.vector_index import VectorIndex

D = 32


def inputs(num_texts, num_videos, frames=5):
    generator = torch.Generator().manual_seed(0)
    text = TextFeatures(
        torch.randn(num_texts, D, generator=generator),
        torch.randn(num_texts, 6, D, generator=generator),
        torch.ones(num_texts, 6, dtype=torch.bool),
    )
    video = FrameFeatures(
        torch.randn(num_videos, frames, D, generator=generator), torch.ones(num_videos, frames, dtype=torch.bool)
    )
    return text, video


def test_text_conditioned_tiles_stay_within_the_budget_and_equal_the_full_matrix():
    head = create_head("xpool", embed_dim=D).eval()
    text, video = inputs(70, 45)
    text_repr, video_repr = head.encode_text(text), head.encode_video(video)
    tiles = []
    original = head.similarity

    def recording(t, v):
        tiles.append((t["text"].shape[0], v["keys"].shape[0]))
        return original(t, v)

    head.similarity = recording
    budget = 300 * head.pair_bytes()  # room for 300 pairs per tile
    tiled = tiled_similarity(head, text_repr, video_repr, text_chunk=64, video_chunk=64, memory_budget_bytes=budget)
    assert max(t * v for t, v in tiles) <= 300 and len(tiles) > 10
    head.similarity = original
    with torch.no_grad():
        full = head.similarity(text_repr, video_repr)
    torch.testing.assert_close(tiled, full)


def test_gemm_heads_are_not_tiled_smaller():
    head = create_head("meanpool", embed_dim=D)
    assert tile_shape(head, 1024, 1024, 1) == (1024, 1024)
    assert tile_shape(create_head("xpool", embed_dim=512), 1024, 1024, 2**30) == (1024, 1024**3 // (1024 * 512 * 24))


def test_vector_index_finds_the_same_top_videos_as_the_head():
    head = create_head("seqtransf", embed_dim=D, layers=1, heads=1, init_from_clip=False).eval()
    text, video = inputs(9, 30)
    with torch.no_grad():
        text_repr, video_repr = head.encode_text(text), head.encode_video(video)
        sims = head.similarity(text_repr, video_repr)
    index = VectorIndex.build(head.video_embedding(video_repr))
    scores, indices = index.search(head.text_embedding(text_repr), k=5)
    expected = sims.topk(5, dim=1)
    torch.testing.assert_close(scores, expected.values)
    assert torch.equal(indices, expected.indices)


@pytest.mark.parametrize("name", ["xpool", "glscl"])
def test_text_conditioned_heads_have_no_vectors_to_index(name):
    options = {"glscl": {"temporal_layers": 1, "init_from_clip": False, "decoder_heads": 2, "decoder_ffn": 32}}.get(
        name, {}
    )
    head = create_head(name, embed_dim=D, **options).eval()
    _, video = inputs(2, 3)
    with torch.no_grad():
        video_repr = head.encode_video(video)
    with pytest.raises(ValueError, match=f"head '{name}' is text-conditioned.*two stages .*tiled similarity"):
        head.video_embedding(video_repr)
