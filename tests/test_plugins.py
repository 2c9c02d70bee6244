"""Adding a component is adding files: a module dropped into a component package is found by its registry
(no import list anywhere), its options are validated at start-up from its own declaration, and a config
file beside it makes it a choice. Each kind is added here as a throwaway module in a temporary folder put on
the package's path — the same as a new file in ``src/tvr/...`` — and run through ``tvr-train``'s
start-up validation."""

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SMALL_OVERRIDES, compose_train
from tvr.config import store_declared_defaults
from tvr.config_checker import InvalidConfigError
from tvr.data.datasets import DATASETS
from tvr.data.sampling import SAMPLERS, create_sampler
from tvr.data.video import VIDEO_BACKENDS, create_backend
from tvr.errors import ConfigError
from tvr.evaluation.rerank import RERANKERS, create_reranker
from tvr.models.heads import HEADS, create_head
from tvr.models.losses import LOSSES, create_loss
from tvr.models.towers import TOWERS
from tvr.validation import validate_train_config

# kind -> (package, registry, module source); each module registers one component named "throwaway_<kind>"
COMPONENTS = {
    "head": (
        "tvr.models.heads",
        HEADS,
        """
        import torch
        import torch.nn.functional as F
        from tvr.models.heads.base import RetrievalHead
        from tvr.models.heads.registry import register_head

        @register_head("throwaway_head")
        class MaxPoolHead(RetrievalHead):
            def __init__(self, embed_dim: int, sharpness: float = 1.0) -> None:
                super().__init__(embed_dim)
                if sharpness <= 0:
                    raise ValueError(f"sharpness must be > 0, got {sharpness}")
                self.sharpness = sharpness

            def encode_text(self, text):
                return {"text": F.normalize(text.sentence, dim=-1)}

            def encode_video(self, video):
                frames = F.normalize(video.frames, dim=-1).masked_fill(~video.mask.bool()[..., None], -1.0)
                return {"video": F.normalize(frames.amax(dim=1), dim=-1)}

            def similarity(self, text_repr, video_repr):
                return self.sharpness * text_repr["text"] @ video_repr["video"].t()
    """,
    ),
    "tower": (
        "tvr.models.towers",
        TOWERS,
        '''
        from tvr.models.towers.base import VideoTower, register_tower

        @register_tower("throwaway_tower")
        class EveryOtherFrame(VideoTower):
            """CLIP on every other frame slot only (the others masked out)."""

            def __init__(self, backbone=None, offset: int = 0, clip_weights: str = "trainable") -> None:
                super().__init__(clip_weights)
                self.check_options(offset=offset)
                self.offset = offset

            @classmethod
            def check_options(cls, **options):
                super().check_options(**options)
                if options.get("offset", 0) not in (0, 1):
                    raise ValueError(f"offset must be 0 or 1, got {options['offset']}")

            def settings(self):
                return {"offset": self.offset}

            def forward(self, backbone, frames, mask=None, with_tokens=False):
                kept = mask.clone()
                kept[:, 1 - self.offset :: 2] = 0
                return backbone.encode_frames(frames, kept)
    ''',
    ),
    "dataset": (
        "tvr.data.datasets",
        DATASETS,
        '''
        from tvr.data.datasets.base import register_dataset
        from tvr.data.datasets.synthetic import SyntheticDataset

        @register_dataset("throwaway_dataset")
        class CaptionlessSynthetic(SyntheticDataset):
            """The built-in set under another name, with an option of its own."""

            def __init__(self, root, lowercase: bool = True, **options) -> None:
                super().__init__(root, **options)
                if not isinstance(lowercase, bool):
                    raise ValueError(f"lowercase must be true or false, got {lowercase!r}")
                self.lowercase = lowercase
    ''',
    ),
    "sampler": (
        "tvr.data.sampling",
        SAMPLERS,
        """
        from dataclasses import dataclass
        from tvr.data.sampling.base import SAMPLERS, FrameSampler
        from tvr.options import option

        @SAMPLERS.register("throwaway_sampler")
        @dataclass
        class EveryNth(FrameSampler):
            stride: int = option(2, minimum=1, help="take every stride-th frame")

            def __call__(self, num_frames, fps, start=None, end=None, rng=None):
                return list(range(0, num_frames, self.stride))[: self.max_frames]

            def describe(self):
                return {"sampler": "throwaway_sampler", "max_frames": self.max_frames, "stride": self.stride}
    """,
    ),
    "loss": (
        "tvr.models.losses",
        LOSSES,
        """
        from torch import nn
        from tvr.models.losses.base import LOSSES, diagonal_cross_entropy

        @LOSSES.register("throwaway_loss")
        class TextToVideoOnly(nn.Module):
            def __init__(self, weight: float = 1.0) -> None:
                super().__init__()
                if weight <= 0:
                    raise ValueError(f"weight must be > 0, got {weight}")
                self.weight = weight

            def forward(self, logits):
                return self.weight * diagonal_cross_entropy(logits)
    """,
    ),
    "reranker": (
        "tvr.evaluation.rerank",
        RERANKERS,
        """
        from dataclasses import dataclass
        from tvr.evaluation.rerank.base import Reranker, register_reranker
        from tvr.options import option

        @register_reranker("throwaway_reranker")
        @dataclass(frozen=True)
        class Power(Reranker):
            exponent: float = option(3.0, above=0, help="scores are raised to this power (rank-preserving on positives)")

            def rerank(self, cos, direction, query_bank=None):
                return cos.clamp(min=0) ** self.exponent
    """,
    ),
    "backend": (
        "tvr.data.video",
        VIDEO_BACKENDS,
        """
        from tvr.data.video.decord_backend import DecordBackend
        from tvr.data.video.base import VIDEO_BACKENDS

        @VIDEO_BACKENDS.register("throwaway_backend")
        class SingleThreadDecord(DecordBackend):
            def __init__(self, timeout_s: float | None = 60.0, retries: int = 0) -> None:
                super().__init__(num_threads=1, timeout_s=timeout_s)
                if retries < 0:
                    raise ValueError(f"retries must be >= 0, got {retries}")
                self.retries = retries
    """,
    ),
}
# The conf/ file a component with options adds (here in a folder on Hydra's search path).
HEAD_TOWERS = "video_tower: per_frame\nvideo_tower_options: null\ntext_tower: clip_text\ntext_tower_options: null\n"
CONFIG_FILES = {
    "head/throwaway_head.yaml": "name: throwaway_head\nsharpness: 2.0\n" + HEAD_TOWERS,
    "loss/throwaway_loss.yaml": "name: throwaway_loss\nweight: 0.5\n",
}
# Selecting every throwaway component at once in tvr-train's config.
SELECT_ALL = [
    "head=throwaway_head",
    "head.video_tower=throwaway_tower",
    "head.video_tower_options={offset:1}",
    "loss=throwaway_loss",
    "data.name=throwaway_dataset",
    "+data.source.lowercase=false",
    "data.video.train_sampler.name=throwaway_sampler",
    "+data.video.train_sampler.stride=3",
    "data.video.backend=throwaway_backend",
    "+data.video.backend_options.retries=1",
    "evaluation.rerank=throwaway_reranker",
    "evaluation.throwaway_reranker.exponent=2.0",
]


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Every throwaway module in a folder on its package's path; registries and Hydra's stored defaults are
    as before afterwards."""
    folder = tmp_path / "plugins"
    for kind, (package_name, registry, source) in COMPONENTS.items():
        package = importlib.import_module(package_name)
        registry.names()  # discover the real components first, so that restoring the entries keeps them
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        (folder / kind).mkdir(parents=True)
        (folder / kind / f"throwaway_{kind}.py").write_text(textwrap.dedent(source))
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder / kind)])
    conf = tmp_path / "conf"
    for name, text in CONFIG_FILES.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    store_declared_defaults()  # as a fresh process would: the new re-ranker's block among evaluation's defaults
    yield conf
    for kind, (package_name, _, _) in COMPONENTS.items():
        sys.modules.pop(f"{package_name}.throwaway_{kind}", None)
    monkeypatch.undo()
    store_declared_defaults()


def compose_with_plugins(conf: Path, overrides: list[str], tmp_path: Path):
    return compose_train(
        [*SMALL_OVERRIDES, f"hydra.searchpath=[file://{conf}]", *overrides], tmp_path / "data", tmp_path / "run"
    )


def test_each_registry_finds_a_new_module_without_an_import_line(plugins):
    for kind, (_, registry, _) in COMPONENTS.items():
        assert f"throwaway_{kind}" in registry.names(), kind
    assert create_head("throwaway_head", embed_dim=8).sharpness == 1.0
    assert create_loss("throwaway_loss", weight=2.0).weight == 2.0
    assert create_sampler("throwaway_sampler", max_frames=3, stride=2)(10, 1.0) == [0, 2, 4]
    assert create_reranker("throwaway_reranker").exponent == 3.0
    assert create_backend("throwaway_backend", retries=2).retries == 2
    assert DATASETS.get("throwaway_dataset").__name__ == "CaptionlessSynthetic"
    assert TOWERS.get("throwaway_tower").__name__ == "EveryOtherFrame"


def test_new_components_pass_start_up_validation_with_their_options(plugins, tmp_path):
    cfg = compose_with_plugins(plugins, SELECT_ALL, tmp_path)
    assert cfg.evaluation.throwaway_reranker.exponent == 2.0 and cfg.head.sharpness == 2.0
    validate_train_config(cfg)
    assert not (tmp_path / "data").exists()  # nothing generated: validation only


def test_a_new_components_bad_options_are_reported_by_key_before_any_work(plugins, tmp_path):
    bad = [
        "head.sharpness=-1",
        "loss.weight=0",
        "data.source.lowercase=maybe",
        "data.video.train_sampler.stride=0",
        "data.video.backend_options.retries=-2",
        "evaluation.throwaway_reranker.exponent=0",
        "+evaluation.throwaway_reranker.base=2",
    ]
    cfg = compose_with_plugins(plugins, SELECT_ALL + bad, tmp_path)
    with pytest.raises(InvalidConfigError) as error:
        validate_train_config(cfg)
    keys = [problem.key for problem in error.value.problems]
    assert keys == [
        "head",
        "loss",
        "data.source",
        "data.video.backend_options",
        "data.video.train_sampler.stride",
        "evaluation.throwaway_reranker.base",
        "evaluation.throwaway_reranker.exponent",
    ], str(error.value)
    message = str(error.value)
    assert "sharpness must be > 0" in message and "got 0, expected an integer >= 1" in message
    assert "evaluation.throwaway_reranker.base: is not an option of re-ranker 'throwaway_reranker'" in message
    # a tower's options are checked over the head that reads it, so once the head's own options are fine
    cfg = compose_with_plugins(plugins, SELECT_ALL + ["head.video_tower_options={offset:2}"], tmp_path)
    with pytest.raises(ConfigError, match=r"^head.video_tower_options: .*offset must be 0 or 1, got 2"):
        validate_train_config(cfg)


def test_without_the_module_the_name_is_refused_listing_the_real_ones(tmp_path):
    cfg = compose_train(
        [*SMALL_OVERRIDES, "data.video.train_sampler.name=throwaway_sampler"], tmp_path / "data", tmp_path / "run"
    )
    with pytest.raises(
        ConfigError, match=r"got 'throwaway_sampler', expected a frame sampler: clip4clip, fps_uniform_decord"
    ):
        validate_train_config(cfg)
