"""Check a composed config before anything is generated, cached, read or built.

``tvr-train`` and ``tvr-eval`` call these first, so a value that cannot work fails at once, with every
problem listed one line per key, instead of after data generation and frame caching (an impossible
frame count used to leave an unusable cache on disk). Names are checked against the registries the
builders use and options against the signatures of the constructors that receive them, so a new head,
sampler, dataset or option needs no change here. Constructors that validate their arguments cheaply are
called (heads on the meta device, which allocates no weights); the CLIP backbone is not built: its
architecture config gives the widths and sizes the other parts must match. The generic checks (typed
options, signatures, ranges, choices, one line per key) are :mod:`tvr.config_checker`'s; this module holds
what is particular to tvr's configs and how the sections fit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytorch_lightning as pl
import torch
from lightning_fabric.connector import _PRECISION_INPUT
from lightning_fabric.utilities.seed import max_seed_value, min_seed_value
from omegaconf import DictConfig
from open_clip.model import CLIPTextCfg

from tvr.builders import backbone_preprocessing, bank_needs
from tvr.config_checker import ConfigChecker, Section
from tvr.data.datamodule import CACHE_MODES, RetrievalDataModule
from tvr.data.datasets import DATASETS
from tvr.data.sampling import SAMPLERS, create_sampler
from tvr.data.transforms import Preprocessing
from tvr.data.video import VIDEO_BACKENDS
from tvr.errors import UserInputError
from tvr.evaluation.options import EvaluationOptions
from tvr.evaluation.rerank import RERANKERS
from tvr.models.backbone import CLIPBackbone, PretrainedTagError, resolve_architecture
from tvr.models.heads import HEADS, RetrievalHead
from tvr.models.heads.base import TOWER_CONFIG_KEYS, TOWER_KINDS, split_tower_choice, tower_keys
from tvr.models.losses import LOSSES
from tvr.models.towers import VisionGeometry
from tvr.models.towers.base import SavesIdentity, tower_class, tower_names
from tvr.optim import OptimOptions
from tvr.options import from_config
from tvr.train_options import WINDOW_METRIC, TrainOptions, compile_unavailable, selectable_metrics

# Every value Lightning's Trainer accepts for ``precision`` (its own check flattens the same literals).
PRECISIONS = tuple(value for literal in get_args(_PRECISION_INPUT) for value in get_args(literal))
# Trainer precisions that leave parameters in their own dtype and compute without autocast.
FULL_PRECISIONS = (32, "32", "32-true")
# Arguments tvr passes itself; the same name in the config would be a second value for one argument.
TRAINER_ARGUMENTS_SET_BY_TVR = ("logger", "callbacks", "plugins", "default_root_dir")
# The config sections a run is built from, in the order they are checked (the backbone gives the shape
# the head and data must fit).
RUN_GROUPS = ("backbone", "head", "loss", "optim", "data", "train", "trainer", "evaluation")
# The splits tvr-eval evaluates (the data config's roles).
EVAL_ROLES = ("val", "test")
# CaptionTokenizer's minimum: SOT, one BPE token, EOT.
MIN_MAX_WORDS = 3
# The keys train.yaml, eval.yaml and their groups define (``expected``: a recipe's paper numbers).
TRAIN_TOP_LEVEL = (
    "data",
    "backbone",
    "head",
    "loss",
    "optim",
    "trainer",
    "logger",
    "evaluation",
    "seed",
    "run_name",
    "paths",
    "train",
    "callbacks",
    "ckpt_path",
    "expected",
)
EVAL_TOP_LEVEL = (*RUN_GROUPS, "ckpt_path", "split", "strict", "seed", "run_name", "paths")


@dataclass(frozen=True)
class ModelShape:
    """What the data and head checks need from the backbone, read from its architecture config."""

    model_name: str
    embed_dim: int
    preprocessing: Preprocessing
    context_length: int
    vision: VisionGeometry


# ---------------------------------------------------------------------- per group
def check_seed(checker: ConfigChecker, top: Section) -> None:
    checker.number(top, "seed", integer=True, minimum=min_seed_value, maximum=max_seed_value)


def check_backbone(checker: ConfigChecker, backbone: Section) -> ModelShape | None:
    """Backbone options, and the shape its architecture gives the model (None if it has none)."""
    shape = None
    try:
        architecture = resolve_architecture(backbone.get("model_name"), backbone.get("architecture"))
        text = architecture.get("text_cfg", {})
        shape = ModelShape(
            model_name=str(backbone.get("model_name") or "inline"),
            embed_dim=int(architecture["embed_dim"]),
            preprocessing=backbone_preprocessing(backbone.values),
            context_length=int(text.get("context_length", CLIPTextCfg.context_length)),
            vision=VisionGeometry.of_architecture(architecture),
        )
    except PretrainedTagError as error:
        checker.fail(backbone.key("pretrained"), str(error), f"pass {backbone.key('pretrained')}=<tag>")
    except (ValueError, KeyError, TypeError) as error:
        key = backbone.key("architecture" if backbone.get("architecture") else "model_name")
        checker.fail(key, str(error).strip("'\""), "choose one of conf/backbone/ with backbone=<name>")
    if shape:
        refuse_image_size(checker, backbone, shape)  # before the options check, whose generic line it replaces
    checker.options(backbone, backbone.values, CLIPBackbone, "the CLIP backbone")
    return shape


def refuse_image_size(checker: ConfigChecker, section: Section, shape: ModelShape) -> None:
    """``image_size`` was a config key before the backbone owned its input geometry: a config that still sets
    it (an experiment file, a ``+`` override) is told the size the backbone takes, whatever value it gives."""
    if "image_size" in section:
        key = section.key("image_size")
        checker.fail(
            key,
            f"is no longer a setting: backbone '{shape.model_name}' takes {shape.preprocessing.image_size} px "
            "input, fixed by its architecture",
            f"remove {key}",
        )


def check_head(checker: ConfigChecker, head: Section, shape: ModelShape | None) -> RetrievalHead | None:
    """The head's options and the towers it chooses by name; returns the head (built on the meta device)
    when its options are fine."""
    factory = checker.registered(head, "name", HEADS)
    if factory is None:
        return None
    what = f"head '{head.get('name')}'"
    options = {name: value for name, value in head.values.items() if name != "name" and name not in TOWER_CONFIG_KEYS}
    for kind in TOWER_KINDS:
        check_tower_keys(checker, head, kind)
    if checker.options(head, options, factory, what, set_by_tvr=("embed_dim",)) and shape is not None:
        with torch.device("meta"):  # builds the layers (shape checks included) without allocating weights
            return checker.builds(
                head.path, f"{what} at embedding width {shape.embed_dim}", factory, embed_dim=shape.embed_dim, **options
            )
    return None


def check_tower_keys(checker: ConfigChecker, head: Section, kind: str) -> None:
    """``head.<kind>_tower`` names a registered tower of that kind; its options are a mapping."""
    name_key, options_key = tower_keys(kind)
    name = head.get(name_key)
    try:
        if name is not None:
            tower_class(str(name), kind)
    except (KeyError, ValueError) as error:
        checker.fail(
            head.key(name_key), error.args[0], f"pass {head.key(name_key)}=<{'|'.join(tower_names(kind))}>"
        )  # args[0]: unquoted
    if not isinstance(head.get(options_key), (dict, type(None))):
        checker.fail(
            head.key(options_key),
            f"got {head.get(options_key)!r}, expected a mapping of the tower's options",
            f"pass {head.key(options_key)}={{<option>:<value>,...}}",
        )


def check_towers(
    checker: ConfigChecker, head: Section, built: RetrievalHead, shape: ModelShape, data: Section | None
) -> None:
    """The towers the head reads from (its own, or those the config chooses) must give what the head reads,
    take the options given, fit the backbone (e.g. TempMe's merge schedule: depth, tokens per frame,
    frames per clip) and the clips the data yields (their frame count; full clips for a tower that merges
    every slot), before any data work."""
    try:
        _, choice = split_tower_choice({name: value for name, value in head.values.items() if name != "name"})
        specs = built.tower_specs(choice)
    except (KeyError, ValueError, TypeError):
        return  # an unknown tower or options that are not a mapping: check_head names the key
    for kind, spec in specs.items():
        options = dict(spec)
        name = options.pop("name")
        tower = tower_class(name, kind)
        name_key, options_key = tower_keys(kind)
        chosen = choice[kind]
        # the key a problem is reported at: the options given, the tower chosen, or the head's own settings
        key = head.key(options_key) if chosen.options else head.key(name_key) if chosen.name else head.path
        missing = built.unread_features(kind, tower)
        if missing:
            checker.fail(
                head.key(name_key),
                f"is '{name}', whose {kind} features lack {', '.join(missing)}, which head '{head.get('name')}' reads",
                f"choose a {kind} tower that gives them: {', '.join(built.readable_towers(kind))}",
            )
        if not checker.options(
            head.child(options_key), chosen.options, tower, f"the '{name}' {kind} tower", set_by_tvr=("backbone",)
        ):
            continue
        try:
            tower.check_options(**options)
        except ValueError as error:
            checker.fail(key, str(error), f"fix the '{name}' {kind} tower's options under {key}")
            continue
        if kind == "video":
            check_video_tower_fits(checker, head, key, name, tower, options, shape, data)


def check_video_tower_fits(
    checker: ConfigChecker,
    head: Section,
    key: str,
    name: str,
    tower,
    options: dict,
    shape: ModelShape,
    data: Section | None,
) -> None:
    """A video tower's ``options`` fit the backbone's ViT, and the samplers give the clips it is built for."""
    try:
        tower.check_fits(shape.vision, **options)
    except ValueError as error:
        vit = f"{shape.vision.depth} blocks, {shape.vision.tokens_per_frame} tokens per frame"
        checker.fail(
            key,
            f"the '{name}' video tower of head '{head.get('name')}' does not fit the backbone's ViT ({vit}): {error}",
            f"change the settings under {key}, or choose another backbone",
        )
    frames = tower.clip_frames(**options)
    multiple = tower.frames_multiple_of(**options)
    video = data.child("video") if data is not None else None
    for role in ("train_sampler", "eval_sampler") if video is not None else ():
        sampler = video.child(role)
        sampled = sampler.get("max_frames")
        if multiple is not None and isinstance(sampled, int) and sampled % multiple:
            checker.fail(
                sampler.key("max_frames"),
                f"is {sampled}, but the '{name}' video tower processes frames in groups of {multiple}: "
                f"clips must hold a multiple of {multiple} frames",
                f"sample a multiple of {multiple} frames (e.g. {sampled - sampled % multiple + multiple})",
            )
        if frames is not None and sampler.get("max_frames") != frames:
            checker.fail(
                sampler.key("max_frames"),
                f"is {sampler.get('max_frames')}, but the '{name}' video tower is built for clips of {frames} frames",
                f"sample {frames} frames or build the tower for {sampler.get('max_frames')}",
            )
        if tower.needs_full_clips and not sampler_fills_clips(sampler):
            checker.fail(
                sampler.key("name"),
                f"sampler '{sampler.get('name')}' may pad short videos, but the '{name}' video "
                "tower has no notion of padded frame slots and must get full clips",
                f"use {sampler.path}.name=fps_uniform_decord with {sampler.path}.fill=repeat (TempMe's sampler), "
                "or a segment sampler (segment_uniform, segment_random, segment_passes), which repeat frames",
            )


def sampler_fills_clips(sampler: Section) -> bool:
    """Whether the configured sampler always yields exactly max_frames frames (never pads)."""
    try:
        return bool(create_sampler(**sampler.values).always_full)  # options set to None are dropped there
    except (TypeError, ValueError, KeyError):
        return True  # its options are wrong: check_sampler reports that


def check_loss(checker: ConfigChecker, loss: Section) -> None:
    factory = checker.registered(loss, "name", LOSSES)
    if factory is not None:
        options = {name: value for name, value in loss.values.items() if name != "name"}
        checker.builds(loss.path, f"loss '{loss.get('name')}'", factory, **options)


def check_optim(checker: ConfigChecker, optim: Section) -> None:
    checker.typed(optim, OptimOptions, "the optim section")


def check_sampler(checker: ConfigChecker, sampler: Section) -> None:
    factory = checker.registered(sampler, "name", SAMPLERS)
    if factory is None:
        return
    what = f"frame sampler '{sampler.get('name')}'"
    # create_sampler drops options set to None, so a config can switch samplers and null the old options
    options = Section(
        sampler.path, {name: value for name, value in sampler.values.items() if name != "name" and value is not None}
    )
    if checker.typed(options, factory, what, unknown="is not an option of"):  # a value refused there: once
        checker.builds(sampler.path, what, create_sampler, **sampler.values)


def check_data(checker: ConfigChecker, data: Section, roles: tuple[str, ...], shape: ModelShape | None) -> None:
    """``roles``: the splits the run trains or evaluates on, which must be named; ``shape``: the model the
    clips and captions must fit (None if the backbone config gives none)."""
    if shape:
        refuse_image_size(checker, data, shape)  # before the options check, whose generic line it replaces
    checker.options(
        data,
        data.values,
        RetrievalDataModule,
        "the data module",
        set_by_tvr=("query_bank", "video_bank", "preprocessing"),
    )
    source = data.child("source")
    root = source.get("root")
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        checker.fail(
            source.key("root"), f"'{root}' is a file", f"pass {source.key('root')}=<the folder that holds the dataset>"
        )
    dataset = checker.registered(data, "name", DATASETS)
    if dataset is not None:
        checker.builds(data.key("source"), f"dataset '{data.get('name')}'", dataset, **source.values)
    context = shape.context_length if shape else None
    checker.number(
        data,
        "max_words",
        integer=True,
        minimum=MIN_MAX_WORDS,
        maximum=context,
        why=f" (SOT + caption + EOT, within the backbone's {context}-token context)" if shape else "",
    )
    splits = data.child("splits")
    for role in roles:
        checker.split_name(splits, role)

    video = data.child("video")
    backend = checker.registered(video, "backend", VIDEO_BACKENDS)
    backend_options = video.child("backend_options")
    if checker.number(backend_options, "timeout_s", above=0, optional=True) and backend is not None:
        checker.builds(
            backend_options.path, f"video backend '{video.get('backend')}'", backend, **backend_options.values
        )
    skip_list = video.get("skip_list")
    if skip_list and not Path(skip_list).is_file():
        key = video.key("skip_list")
        checker.fail(key, f"file not found: {skip_list}", f"write one with tools/check_videos.py, or pass {key}=null")
    for role in ("train_sampler", "eval_sampler"):
        check_sampler(checker, video.child(role))

    cache = data.child("frame_cache")
    checker.choice(cache, "mode", CACHE_MODES)
    checker.number(cache, "workers", integer=True, minimum=0)


def check_train(checker: ConfigChecker, train: Section, has_val: bool) -> None:
    window_ok = checker.typed(train, TrainOptions, "the train section")
    if has_val and window_ok:  # without a val split the last epoch is kept and select_metric is unused
        checker.choice(
            train,
            "select_metric",
            selectable_metrics(train.get("select_window") or 1),
            why=(
                f" (the best checkpoint is the one with the highest value; {WINDOW_METRIC} needs train.select_window > 1)"
            ),
        )


def check_trainer(checker: ConfigChecker, trainer: Section, training: bool) -> None:
    """``training``: tvr-train (max_epochs matters) rather than tvr-eval."""
    checker.options(
        trainer, trainer.values, pl.Trainer, "pytorch_lightning.Trainer", set_by_tvr=TRAINER_ARGUMENTS_SET_BY_TVR
    )
    checker.choice(trainer, "precision", PRECISIONS)
    checker.number(trainer, "num_nodes", integer=True, minimum=1)
    if training:  # 0 would test the untrained model; -1 (Lightning's "forever") has no schedule length
        checker.number(trainer, "max_epochs", integer=True, minimum=1)


def check_evaluation(checker: ConfigChecker, evaluation: Section) -> None:
    """The section's own options and the block of every registered re-ranker (``evaluation.<name>``)."""
    rerankers = tuple(RERANKERS.names())
    own = Section(evaluation.path, {name: value for name, value in evaluation.values.items() if name not in rerankers})
    checker.typed(own, EvaluationOptions, "the evaluation section", also_known=rerankers)
    for name in rerankers:
        if name in evaluation:
            checker.typed(
                evaluation.child(name), RERANKERS.get(name), f"re-ranker '{name}'", unknown="is not an option of"
            )


def check_clip_param_dtype(
    checker: ConfigChecker,
    train: Section,
    optim: Section | None,
    trainer: Section | None,
    head: Section | None,
    built_head: RetrievalHead | None,
) -> None:
    """``train.clip_param_dtype=fp16`` is the DRL/CLIP4Clip family's GPU training as a whole: BertAdam updating
    fp16 parameters with fp16 moments, CLIP computing in fp16 without autocast, and no adapter of fp32
    weights inside CLIP (the family's references have none)."""
    if train.get("clip_param_dtype") != "fp16":
        return
    key = train.key("clip_param_dtype")
    if optim is not None and optim.get("name") != "bertadam":
        checker.fail(
            key,
            f"is fp16, the storage of the references that update it with BertAdam's fp16 arithmetic, but "
            f"{optim.key('name')} is '{optim.get('name')}'",
            "pass optim=bertadam (as the CLIP4Clip/DRL family's recipes do), or train.clip_param_dtype=fp32",
        )
    if trainer is not None and trainer.get("precision") not in FULL_PRECISIONS:
        checker.fail(
            key,
            f"is fp16, which computes CLIP in fp16 without autocast as the references do, but "
            f"{trainer.key('precision')} is '{trainer.get('precision')}'",
            f"pass {trainer.key('precision')}=32-true, or train.clip_param_dtype=fp32",
        )
    if head is None or built_head is None:
        return
    try:
        _, choice = split_tower_choice({name: value for name, value in head.values.items() if name != "name"})
        towers = {kind: tower_class(spec["name"], kind) for kind, spec in built_head.tower_specs(choice).items()}
    except (KeyError, ValueError, TypeError):
        return  # check_head and check_towers name the key
    for kind, tower in towers.items():
        if issubclass(tower, SavesIdentity):  # the towers with parameters of their own
            checker.fail(
                key,
                f"is fp16, but the {kind} tower '{tower.name}' adds fp32 weights inside CLIP, which would meet "
                "its fp16 activations (the CLIP4Clip/DRL family's references use the per_frame and clip_text towers)",
                "pass train.clip_param_dtype=fp32",
            )


# ---------------------------------------------------------------------- entry points
def check_run(
    checker: ConfigChecker,
    cfg: DictConfig,
    data_roles: tuple[str, ...],
    training: bool,
    groups: tuple[str, ...] = RUN_GROUPS,
) -> RetrievalHead | None:
    """The sections a run is built from (those of ``groups``). ``data_roles``: the splits that must be
    named; ``training``: tvr-train (epochs and checkpoint selection matter) rather than tvr-eval.
    Returns the head, built on the meta device, when its options are fine."""
    backbone, head, loss, optim, data, train, trainer, evaluation = (
        checker.section(cfg, group) if group in groups else None for group in RUN_GROUPS
    )
    shape = check_backbone(checker, backbone) if backbone else None
    built_head = check_head(checker, head, shape) if head else None
    if built_head is not None:
        check_towers(checker, head, built_head, shape, data)
    if loss:
        check_loss(checker, loss)
    if optim:
        check_optim(checker, optim)
    if data:
        check_data(checker, data, data_roles, shape)
    if train:
        check_train(checker, train, has_val=training and bool(data and data.child("splits").get("val")))
    if trainer:
        check_trainer(checker, trainer, training)
    if evaluation:
        check_evaluation(checker, evaluation)
    if built_head is not None and shape is not None:
        check_head_fits(checker, head, built_head, shape, data)
    if evaluation and built_head is not None:
        check_reranker_needs(checker, evaluation, built_head, data)
    if train and training:
        check_clip_param_dtype(checker, train, optim, trainer, head, built_head)
    if training and built_head is not None and data is not None and trainer is not None:
        check_head_batch(checker, head, built_head, data, trainer)
    return built_head


def check_head_batch(
    checker: ConfigChecker, head: Section, built: RetrievalHead, data: Section, trainer: Section
) -> None:
    """A head that needs a minimum global training batch (:meth:`RetrievalHead.check_batch`) gets it: the
    global batch is ``data.batch_size`` on each device of each node (devices given as a count)."""
    per_device = data.get("batch_size")
    devices = trainer.get("devices") if "devices" in trainer else 1
    nodes = trainer.get("num_nodes") if "num_nodes" in trainer else 1
    if not all(
        isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in (per_device, devices, nodes)
    ):
        return  # not counts (devices=auto, a device list): their own checks speak, or the batch is only known later
    try:
        built.check_batch(per_device * devices * nodes)
    except UserInputError as error:
        key = getattr(error, "key", head.path)
        checker.fail(
            key,
            str(error).removeprefix(f"{key}: ")
            + f" (data.batch_size={per_device}, trainer.devices={devices}, trainer.num_nodes={nodes})",
        )


def check_head_fits(
    checker: ConfigChecker, head: Section, built: RetrievalHead, shape: ModelShape, data: Section | None
) -> None:
    """The head's options fit the backbone's ViT (UCoFiA's top-k of the patch grid), and a head built for
    captions or clips of a fixed length (:meth:`RetrievalHead.clip_lengths`) gets them from the data."""
    try:
        built.check_fits(shape.vision)
    except UserInputError as error:
        key = getattr(error, "key", head.path)
        checker.fail(key, str(error).removeprefix(f"{key}: "))
    lengths = built.clip_lengths()
    if data is None or not lengths:
        return
    video = data.child("video")
    given = {"max_words": [data]} | {"max_frames": [video.child(role) for role in ("train_sampler", "eval_sampler")]}
    for option, length in lengths.items():
        for section in given[option]:
            if section.get(option) is not None and section.get(option) != length:
                checker.fail(
                    head.key(option),
                    f"is {length}, but {section.key(option)} is {section.get(option)}; head '{head.get('name')}' "
                    f"sizes its parameters by it",
                    f"set {head.key(option)}={section.get(option)} (or the data's to {length})",
                )


def check_reranker_needs(
    checker: ConfigChecker, evaluation: Section, built: RetrievalHead, data: Section | None
) -> None:
    """A level-aware re-ranker (SK-norm) needs a head that scores at several levels, and a re-ranker with a
    bank needs the split its bank comes from."""
    name = evaluation.get("rerank")
    if not isinstance(name, str) or name not in RERANKERS:
        return  # none, or an unknown name: check_evaluation reports it
    cls = RERANKERS.get(name)
    if cls.level_aware and not built.has_levels:
        checker.fail(
            evaluation.key("rerank"),
            f"is '{name}', which normalises each score level of the head, but head '{built.name}' scores at one level",
            "choose a head with score levels (ucofia, hbi) or another re-ranker",
        )
    try:
        reranker = from_config(cls, evaluation.get(name))
    except (TypeError, ValueError):
        return  # its options: check_evaluation reports them
    if not bank_needs(reranker):
        return
    options = evaluation.child(name)
    bank_split = options.get("bank_split") if "bank_split" in options else None
    train_split = data.child("splits").get("train") if data is not None else None
    if bank_split is None and train_split is None:
        checker.fail(
            options.key("bank_split") if "bank_split" in options else evaluation.key("rerank"),
            f"re-ranker '{name}' scores a bank of training items, but no bank split is set and data.splits.train is null",
            f"pass {options.key('bank_split')}=<split> or set data.splits.train",
        )


def check_pretrained_files(checker: ConfigChecker, head: Section, built: RetrievalHead) -> None:
    """Files a head reads its own weights from when training starts (HBI's estimator), before any data work."""
    try:
        built.check_pretrained()
    except UserInputError as error:
        key = getattr(error, "key", head.path)
        checker.fail(key, str(error).removeprefix(f"{key}: "))


def validate_train_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` naming every value of a ``tvr-train`` config that cannot work."""
    checker = ConfigChecker()
    checker.known_keys(
        Section("", dict.fromkeys(key for key in cfg if key != "hydra")), TRAIN_TOP_LEVEL, "tvr-train's config"
    )
    check_seed(checker, checker.top_level(cfg, ("seed",)))
    built_head = check_run(checker, cfg, data_roles=("train", "test"), training=True)
    if built_head is not None:
        check_pretrained_files(checker, checker.section(cfg, "head"), built_head)
    if cfg.train.get("compile") is True:
        check_compile(checker, str(cfg.trainer.get("accelerator", "auto")))
    checker.raise_problems()


def check_compile(checker: ConfigChecker, accelerator: str) -> None:
    problem = compile_unavailable(accelerator)
    if problem:
        checker.fail("train.compile", problem, "install it, or set train.compile=false (the default)")


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` naming every value of a ``tvr-eval`` config that cannot work: its own
    keys, and the run config merged in from the checkpoint (with its overrides) when there is one."""
    checker = ConfigChecker()
    checker.known_keys(
        Section("", dict.fromkeys(key for key in cfg if key != "hydra")), EVAL_TOP_LEVEL, "tvr-eval's config"
    )
    zero_shot = cfg.get("ckpt_path") is None
    if zero_shot:
        absent = [group for group in ("backbone", "head", "data") if cfg.get(group) is None]
        if absent:
            checker.fail(
                "ckpt_path",
                f"has no value and {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not chosen",
                "pass ckpt_path=<run dir>/checkpoints/best.ckpt, or evaluate zero-shot with "
                "backbone=<name> backbone.weights=<CLIP file> head=meanpool data=<name>",
            )
    top = checker.top_level(cfg, ("seed", "split", "strict"))
    check_seed(checker, top)
    split_ok = checker.choice(top, "split", EVAL_ROLES)
    checker.flag(top, "strict")
    # The run config is merged in from the checkpoint (tvr.config.with_checkpoint_config). Without one (a
    # missing or foreign file, which evaluate() reports by name) only eval.yaml's own sections are checked:
    # data=<name> cannot even resolve its image size.
    if zero_shot:  # no loss, optimiser or training section: the model is the backbone and a fresh head
        groups = ("trainer", "evaluation") if absent else ("backbone", "head", "data", "trainer", "evaluation")
    else:
        groups = RUN_GROUPS if cfg.get("head") is not None else ("trainer", "evaluation")
    check_run(checker, cfg, data_roles=(top.get("split"),) if split_ok else (), training=False, groups=groups)
    checker.raise_problems()
