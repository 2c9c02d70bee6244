"""Pre-decode the sampled frames of a dataset's splits into frame caches (memory-mapped uint8).

    python tools/cache_frames.py data=msrvtt backbone=vit_b32 data.source.root=/datasets/msrvtt [--workers 8] [--force]

Pass the overrides of the training run that will read the caches: the tool composes the same config as
``tvr-train``, and a cache serves only runs with its split, sampler settings and image size and resize
rule (the backbone's preprocessing). A run whose settings differ warns and decodes from the videos.

Caches are written to ``data.frame_cache.dir`` (default ``<root>/frame_cache``), one per split and
setting. A run uses them when ``data.frame_cache.mode`` is ``auto`` or ``build``; random samplers
(``segment_random``, shuffled order) and augmented training frames are never cached.
"""

from __future__ import annotations

import argparse
import shutil

from omegaconf import DictConfig

from tvr.builders import backbone_preprocessing, build_datamodule
from tvr.config import compose_config
from tvr.data.frame_cache import (
    NO_CACHE,
    FrameCache,
    build_frame_caches,
    cache_mismatch,
    cached_geometry,
    caches_in,
    describe_settings,
    recorded_geometry,
)
from tvr.data.transforms import Preprocessing

# tvr-train's default backbone: 32 px, made for the tests and the built-in synthetic data. Its caches are
# read by no run on a real dataset, which names a CLIP backbone (or an experiment that does).
TEST_BACKBONE = "tiny"
BUILT_IN_DATA = "synthetic"


def image_size_source(cfg: DictConfig, preprocessing: Preprocessing) -> str:
    """The backbone the caches' image size comes from, e.g. ``backbone=vit_b32 (ViT-B-32-quickgelu)``.

    Refuses, before any file is read, the two ways to build caches that the intended run ignores: a real
    dataset with the test backbone picked by default (naming ``backbone=tiny`` builds them anyway), and an
    ``image_size`` key, which the run refuses (the backbone fixes its input size).
    """
    backbone = cfg.hydra.runtime.choices.backbone
    named = any(override.split("=", 1)[0].lstrip("+~") == "backbone" for override in cfg.hydra.overrides.task)
    size = preprocessing.image_size
    if backbone == TEST_BACKBONE and cfg.data.name != BUILT_IN_DATA and not named:
        raise SystemExit(
            f"data={cfg.data.name} without a backbone: the caches would be {size} px for the "
            f"'{TEST_BACKBONE}' test backbone, and a run with a CLIP backbone (224 px) would ignore them and decode "
            f"every video again. Pass the backbone or experiment of the training run, e.g. "
            f"`python tools/cache_frames.py data={cfg.data.name} backbone=vit_b32`, or backbone={TEST_BACKBONE} "
            "to cache for the test backbone anyway."
        )
    for section in ("backbone", "data"):
        if "image_size" in cfg[section]:
            raise SystemExit(
                f"{section}.image_size is no longer a setting: backbone={backbone} takes {size} px input, "
                f"fixed by its architecture; remove {section}.image_size"
            )
    return f"backbone={backbone} ({cfg.backbone.model_name})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: those of the training run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="rebuild caches that are already valid")
    args = parser.parse_args(argv)

    cfg = compose_config(args.overrides)
    try:
        preprocessing = backbone_preprocessing(cfg.backbone)
    except ValueError as error:  # an unknown model name or pretrained tag
        raise SystemExit(f"backbone={cfg.hydra.runtime.choices.backbone}: {error}") from error
    size_source = image_size_source(cfg, preprocessing)
    datamodule = build_datamodule(cfg.data, preprocessing=preprocessing)
    datamodule.dataset.prepare(tuple(name for name in datamodule.split_names.values() if name))
    if datamodule.cache_root is None:
        raise SystemExit("data.frame_cache.dir is not set")
    size, geometry = preprocessing.image_size, cached_geometry(preprocessing)

    plans, targets = [], []  # plans: (role, split, path, settings, state, cache or None until built)
    for role, split, sampler, path in datamodule.cache_targets():
        description = sampler.describe()
        cache = None if args.force else FrameCache.open(path, split, description, preprocessing)
        state = "valid, kept"
        if cache is None:
            reason = cache_mismatch(path, split, description, preprocessing) or "--force"
            state = "built" if reason == NO_CACHE else f"rebuilt ({reason})"
            shutil.rmtree(path, ignore_errors=True)
            targets.append((path, split, datamodule._reader(sampler)))
        plans.append((role, split, path, describe_settings(description, geometry), state, cache))
    built = iter(build_frame_caches(targets, workers=args.workers) if targets else [])

    print(
        f"Frame caches at {size} px, the input size of {size_source}; a run reads them when its samplers "
        "and image size (and resize rule) match.\n"
    )
    print("| role | split | state | videos | unreadable | settings | cache |\n|---|---|---|---|---|---|---|")
    unreadable = 0
    for role, split, path, settings, state, cache in plans:
        cache = cache if cache is not None else next(built)
        unreadable += len(cache.failed)
        print(f"| {role} | {split.name} | {state} | {len(split.videos)} | {len(cache.failed)} | {settings} | {path} |")
    for role, name in datamodule.split_names.items():
        if name and not datamodule.frames_are_fixed(role):
            settings = describe_settings(datamodule._sampler_for(role).describe(), geometry)
            print(f"| {role} | {name} | not cached: random frames (sampler or augmentation) | - | - | {settings} | - |")
    if unreadable:
        print(f"\n{unreadable} videos could not be decoded; runs count them as decode failures")

    ours = {path for _, _, path, *_ in plans}
    others = [(path, meta) for path, meta in caches_in(datamodule.cache_root) if path not in ours]
    if others:
        print(
            "\nOther caches in the same folder, not read by a run with these settings (delete them to free disk space):"
        )
        for path, meta in others:
            print(
                f"- {path}: split {meta.get('split')}, {describe_settings(meta.get('sampler'), recorded_geometry(meta))}"
                + ("" if meta.get("complete") else ", unfinished")
            )


if __name__ == "__main__":
    main()
