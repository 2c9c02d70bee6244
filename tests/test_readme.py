"""Documented means working: every command line of the README and of the pages under docs/ is listed here
with how the suite runs it, so a documented line that is added or changed without a way to check it fails
this file.

Cheap lines run as written, on the small synthetic set with one epoch (appended overrides only shrink
the run); lines that need a GPU, a cluster, weights or a real benchmark compose and validate instead;
what remains names the test that covers it elsewhere (``tests/<file>.py::<test>``, which must exist), or
says why no test can run it.
"""

import ast
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train
from test_cli import QUIET, run_cli
from tvr.validation import validate_train_config

# The README and every page under docs/ (a page's examples are as binding as the README's)
PAGES = {
    path.relative_to(REPO_ROOT).as_posix(): path.read_text()
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
}
SHRINK = ["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET
CKPT = "ckpt_path=…"  # the documentation's placeholder for "a checkpoint of yours"
# run by the readme_run fixture, whose checkpoint the documented tvr-eval lines evaluate
FIRST_TRAINING_LINE = "tvr-train head=seqtransf head.layers=2 head.heads=2 head.init_from_clip=false"

RESUME = "tests/test_resume.py::test_ckpt_path_continues_in_the_runs_own_folder"
SWEEP_SUMMARY = "tests/test_sweep.py::test_a_sweep_with_a_failing_configuration_completes_and_summarises_itself"
BENCH_TRAIN = "tests/test_bench_train.py::test_bench_train_end_to_end"
VIDEO_TOOLS = "tests/test_cli.py::test_video_tools_from_the_command_line"
GPU_CHECK = "tests/test_gpu_check.py::test_the_tiny_run_on_the_cpu_passes_every_check"
RUN, COMPOSE, ELSEWHERE, NOT_RUN = "run", "compose", "elsewhere", "not run"
# (how, why) for RUN and COMPOSE, (ELSEWHERE, the covering test node, why) and (NOT_RUN, why) otherwise
HOW = {
    "make train": (
        NOT_RUN,
        "creates .venv and runs the full default run (minutes); tools/bench_synthetic.py runs it as written",
    ),
    "make test": (NOT_RUN, "creates .venv and runs the fast tier of this suite"),
    "make test-all": (NOT_RUN, "creates .venv and runs this whole suite: the command CI runs (.ci/run)"),
    "make lint": (NOT_RUN, "runs ruff over the repository: CI runs it before the tests (.ci/run)"),
    "tvr-train experiment=xpool_msrvtt backbone.weights=/models/ViT-B-32.pt data.source.root=/datasets/msrvtt": (
        COMPOSE,
        "needs a GPU, CLIP weights and MSR-VTT; the recipe composes and passes start-up validation",
    ),
    "tvr-eval ckpt_path=outputs/…/checkpoints/best.ckpt": (RUN, None),
    "tvr-eval ckpt_path=… split=val evaluation.rerank=dsl": (RUN, None),
    "tvr-eval ckpt_path=… data.source.root=/other": (RUN, None),
    "tvr-eval ckpt_path=… data=synthetic data.source.root=/other": (RUN, None),
    "tvr-train head=seqtransf head.layers=2 head.heads=2 head.init_from_clip=false": (RUN, None),
    "python tools/convert_checkpoint.py best.pth diffusionret_msrvtt.ckpt experiment=diffusionret_gen_msrvtt": (
        ELSEWHERE,
        "tests/test_diffusionret.py::test_a_released_checkpoint_converts_and_tvr_eval_reports_both_stages_from_it",
        "converts a release of the reference's layout (tiny CLIP) with the same code path",
    ),
    "tvr-eval ckpt_path=diffusionret_msrvtt.ckpt data.source.root=/datasets/msrvtt evaluation.seeds=[42,43,44]": (
        NOT_RUN,
        "needs the released weights and MSR-VTT's videos; tests/test_diffusionret.py evaluates a converted release and seeds",
    ),
    "tvr-train head=xpool backbone_head=tiny_tempme_tower": (
        ELSEWHERE,
        "tests/test_tower_composition.py::test_a_head_trains_over_a_tower_of_another_method[xpool_over_tempme]",
        "trains X-Pool over the tempme tower on the small synthetic set",
    ),
    "tvr-train head=glscl head.text_tower=lora_text": (
        ELSEWHERE,
        "tests/test_tower_composition.py::test_a_head_trains_over_a_tower_of_another_method[glscl_with_lora_text]",
        "trains GLSCL with the lora_text tower on the small synthetic set",
    ),
    "tvr-train experiment=synthetic_seqtransf logger=wandb": (RUN, None),
    "tvr-train trainer=gpu": (COMPOSE, "needs a GPU"),
    "tvr-train trainer=ddp trainer.devices=4": (COMPOSE, "needs 4 GPUs; 2-process CPU DDP runs in test_cli"),
    "tvr-train trainer.max_epochs=60 ckpt_path=last": (
        ELSEWHERE,
        RESUME,
        "continues the newest run of a configuration",
    ),
    "tvr-train ckpt_path=outputs/…/checkpoints/last.ckpt": (
        ELSEWHERE,
        RESUME,
        "continues a run by its file, in its folder",
    ),
    "tvr-train -m head=meanpool,seqtransf seed=0,1,2": (RUN, None),
    "tvr-results multirun/2026-12-01_10-00-00": (
        ELSEWHERE,
        SWEEP_SUMMARY,
        "runs it on a real sweep of the synthetic set",
    ),
    # docs/sweep_synthetic.md: the sweep its figures were made with
    "tvr-train -m head=meanpool,seqtransf seed=0,1,2 trainer.max_epochs=10": (
        ELSEWHERE,
        "tests/test_readme.py::test_readme_train_lines_run_as_written",
        "runs the sweep line of docs/clusters.md, this one with 10 epochs instead of the default",
    ),
    "tvr-results multirun/<time>": (ELSEWHERE, SWEEP_SUMMARY, "runs it on a real sweep of the synthetic set"),
    "sbatch tools/slurm/train.sbatch experiment=clip4clip_meanp_msrvtt data.source.root=/datasets/msrvtt": (
        ELSEWHERE,
        "tests/test_slurm.py::test_sbatch_script_runs_tvr_train_sized_by_the_allocation",
        "needs SLURM; runs the script's srun line under stand-in SLURM variables",
    ),
    "tvr-train -m hydra/launcher=slurm trainer=ddp_multinode ckpt_path=last experiment=xpool_msrvtt seed=0,1,2 "
    "data.source.root=/datasets/msrvtt": (
        ELSEWHERE,
        "tests/test_slurm.py::test_sweep_submission_sbatch_header_and_requeue_state",
        "needs SLURM; submits a sweep to a stand-in cluster",
    ),
    "python tools/bench_train.py": (ELSEWHERE, BENCH_TRAIN, "minutes; runs it with few steps"),
    "python tools/gpu_check.py --json gpu_check.json": (
        ELSEWHERE,
        GPU_CHECK,
        "needs a GPU; runs the same script on the CPU with the tiny model",
    ),
    "python tools/gpu_check.py --device cpu --tiny": (ELSEWHERE, GPU_CHECK, "a minute or more on 2 cores"),
    "python tools/bench_loader.py --breakdown --json bench_loader.json": (
        ELSEWHERE,
        "tests/test_bench_loader.py::test_bench_loader_measures_each_source_and_augmentation",
        "minutes; runs it with few clips and videos",
    ),
    "python tools/bench_loader.py --startup --annotations ../shared/data/annotations": (
        ELSEWHERE,
        "tests/test_bench_loader.py::test_start_up_reads_every_annotation_file_once",
        "builds 180k pairs three times at three sizes; the test measures a small fraction of them",
    ),
    "tvr-train trainer=gpu train.compile=true": (
        COMPOSE,
        "needs a GPU; a compiled CPU run is tests/test_training.py's 'compiled' case",
    ),
    "python tools/bench_train.py --device cuda --backbone vit_b32 --batch-size 128": (
        ELSEWHERE,
        BENCH_TRAIN,
        "needs a GPU; runs the same tool on the CPU with few steps",
    ),
    "tvr-train data=msrvtt backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt data.source.root=/datasets/msrvtt": (
        COMPOSE,
        "needs CLIP weights and a benchmark; test_backbone loads every weights format",
    ),
    "python tools/compress_videos.py RAW/ data/msrvtt/videos --workers 8": (
        ELSEWHERE,
        VIDEO_TOOLS,
        "needs raw videos; runs the tool on the synthetic videos",
    ),
    "python tools/check_videos.py data=msrvtt --timeout 30": (
        ELSEWHERE,
        VIDEO_TOOLS,
        "needs MSR-VTT; runs the tool on the synthetic set",
    ),
    "python tools/cache_frames.py data=msrvtt backbone=vit_b32 --workers 8": (
        ELSEWHERE,
        "tests/test_frame_cache_tool.py::"
        "test_tool_takes_the_image_size_of_the_named_backbone_and_refuses_the_test_backbone_on_real_data",
        "needs MSR-VTT; runs it with backbone=vit_b32 on the synthetic set",
    ),
    "tvr-eval backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt head=meanpool data=msrvtt data.source.root=/datasets/msrvtt": (
        ELSEWHERE,
        "tests/test_retriever.py::test_tvr_eval_evaluates_a_backbone_zero_shot",
        "needs CLIP weights and MSR-VTT; runs tvr-eval zero-shot on a tiny backbone",
    ),
    "tvr-index my_videos/ ckpt_path=outputs/…/checkpoints/best.ckpt index=my_index": (RUN, None),
    'tvr-search "a dog runs on the beach" index=my_index --top-k 10': (RUN, None),
    "tvr-search --queries queries.txt index=my_index --html results.html": (RUN, None),
    "tvr-index my_videos/ backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt head=meanpool index=clip_index": (
        ELSEWHERE,
        "tests/test_search.py::test_an_index_refuses_another_model_naming_both",
        "needs CLIP weights; indexes a folder with a zero-shot tiny backbone",
    ),
    "python tools/bench_search.py --json bench_search.json": (
        ELSEWHERE,
        "tests/test_bench_search.py::test_bench_search_tiny_run_writes_every_section",
        "about 20 minutes; runs it at tiny sizes",
    ),
    "tvr-train head=tempme": (RUN, None),
    "python tools/bench_towers.py --json bench_towers.json": (
        ELSEWHERE,
        "tests/test_bench_towers.py::test_bench_towers_quick_run_writes_every_section",
        "minutes; runs it with --quick",
    ),
    "tvr-train experiment=hbi_estimator_synthetic hydra.run.dir=outputs/hbi_estimator": (
        ELSEWHERE,
        "tests/test_hbi.py::test_the_estimator_stage_trains_the_estimator_alone_and_writes_it",
        "runs the estimator stage on the small synthetic set and checks estimator.pt",
    ),
    "tvr-train head=hbi head.estimator_ckpt=outputs/hbi_estimator/estimator.pt": (
        ELSEWHERE,
        "tests/test_hbi.py::test_hbi_trains_with_the_estimator_as_frozen_teacher_and_evaluates_without_its_file",
        "trains HBI with the estimator stage's file, then evaluates it without that file",
    ),
    "tvr-eval ckpt_path=… evaluation.report_levels=true": (RUN, None),
    'python tools/explain.py ckpt_path=… --text "a red square moves left" --video clip.mp4 --out explain.png': (
        ELSEWHERE,
        "tests/test_hbi.py::test_explain_draws_the_word_by_frame_interaction",
        "runs tools/explain.py on a trained HBI checkpoint and a synthetic video",
    ),
}


def code_blocks(language: str) -> list[tuple[str, str]]:
    """``(page, block)`` for every fenced block of ``language`` in the README and docs/."""
    return [
        (page, block)
        for page, text in PAGES.items()
        for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    ]


def documented_commands() -> list[str]:
    """Command lines of the documentation's bash blocks, without their comments."""
    commands = []
    for _, block in code_blocks("bash"):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def test_every_documented_command_line_is_exercised():
    commands = documented_commands()
    assert FIRST_TRAINING_LINE in commands and "make train" in commands  # the collection reads the pages
    unknown = [command for command in commands if command not in HOW]
    assert not unknown, f"command lines in README.md or docs/*.md with no test; add them to HOW: {unknown}"
    stale = [command for command in HOW if command not in commands]
    assert not stale, f"HOW lists lines that neither README.md nor docs/*.md has any more: {stale}"


def defined_tests(path) -> set[str]:
    """The names of the test functions a test file defines at its top level."""
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_line_covered_elsewhere_names_a_test_that_exists():
    """``tests/<file>.py::<test>[<id>]``: the file defines the test, and the id is one of its parameter ids."""
    elsewhere = {command: entry[1] for command, entry in HOW.items() if entry[0] == ELSEWHERE}
    assert len(elsewhere) > 10 and all(len(entry) == 3 for entry in HOW.values() if entry[0] == ELSEWHERE)
    missing = []
    for command, node in elsewhere.items():
        match = re.fullmatch(r"(tests/\w+\.py)::(\w+)(?:\[([\w-]+)\])?", node)
        path = REPO_ROOT / match[1] if match else None
        exists = (
            path is not None
            and path.is_file()
            and match[2] in defined_tests(path)
            and (match[3] is None or f'"{match[3]}"' in path.read_text())
        )
        if not exists:
            missing.append(f"{command!r} -> {node!r}")
    assert not missing, f"HOW names tests that do not exist: {missing}"
    assert all(why for how, why, *_ in HOW.values() if how == NOT_RUN)  # a line no test runs says why


def test_every_python_name_the_documentation_names_imports():
    text = "\n".join(PAGES.values())
    names = set(re.findall(r"`(tvr(?:\.\w+)+)", text)) | {
        f"tvr.evaluation.{name}" for name in re.findall(r"from tvr\.evaluation import (\w+)", text)
    }
    assert "tvr.evaluation.retrieval_metrics" in names
    for name in sorted(names):
        module_name, attribute = name, None
        while True:
            try:
                module = importlib.import_module(module_name)
                break
            except ModuleNotFoundError:
                module_name, _, tail = module_name.rpartition(".")
                attribute = tail if attribute is None else f"{tail}.{attribute}"
        for part in (attribute or "").split(".") if attribute else []:
            module = getattr(module, part)  # AttributeError names what the documentation promises and tvr lacks


# The registry each registration decorator of the extension guide fills, as "module:name".
REGISTRY_OF_DECORATOR = {
    "register_head": "tvr.models.heads:HEADS",
    "register_tower": "tvr.models.towers:TOWERS",
    "register_dataset": "tvr.data.datasets:DATASETS",
    "SAMPLERS.register": "tvr.data.sampling:SAMPLERS",
    "LOSSES.register": "tvr.models.losses:LOSSES",
    "VIDEO_BACKENDS.register": "tvr.data.video:VIDEO_BACKENDS",
    "register_reranker": "tvr.evaluation.rerank:RERANKERS",
}


def example_file(block: str) -> str | None:
    """The file a documented module is meant to be (its first line: ``# src/tvr/...py``), else None."""
    first = block.splitlines()[0]
    return first[2:].strip() if first.startswith("# src/") else None


def is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return True


def unresolved_tvr_imports(block: str) -> list[str]:
    """``from tvr… import name`` lines of ``block`` that name something tvr does not have."""
    missing = []
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tvr":
            for alias in node.names:
                if not is_module(node.module):
                    missing.append(f"{node.module} (no such module)")
                    continue
                module = importlib.import_module(node.module)
                if not hasattr(module, alias.name) and not is_module(f"{node.module}.{alias.name}"):
                    missing.append(f"{node.module}.{alias.name}")
    return missing


@pytest.mark.parametrize(
    "page, block",
    code_blocks("python"),
    ids=lambda value: value if value.endswith(".md") else (example_file(value) or "snippet"),
)
def test_documented_python_compiles_and_its_tvr_imports_resolve(page, block):
    compile(block, page, "exec")
    missing = unresolved_tvr_imports(block)
    assert not missing, f"{page} imports names tvr lacks: {missing}"


def test_extension_guide_examples_register_their_components(tmp_path):
    """Each example module of docs/extending.md, saved as its own file and imported, registers its component
    under the documented name. Run in a fresh interpreter: the suite's registries must not see the examples."""
    examples = {}
    for page, block in code_blocks("python"):
        target = example_file(block)
        if page == "docs/extending.md" and target:
            decorator, name = re.search(r'^@(register_\w+|\w+\.register)\("(\w+)"\)', block, flags=re.M).groups()
            path = tmp_path / f"{name}.py"
            path.write_text(block)
            examples[str(path)] = (REGISTRY_OF_DECORATOR[decorator], name)
    assert len(examples) == 7  # head, tower, dataset, frame sampler, loss, re-ranker, decode backend
    check = """
import importlib, importlib.util, json, sys
for path, (registry, name) in json.loads(sys.argv[1]).items():
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module_name, attribute = registry.split(":")
    assert getattr(importlib.import_module(module_name), attribute).get(name).__module__ == spec.name, (path, registry)
"""
    result = subprocess.run(
        [sys.executable, "-c", check, json.dumps(examples)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_documentation_links_lead_somewhere():
    broken = []
    for page, text in PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            path = (REPO_ROOT / page).parent / file if file else REPO_ROOT / page
            if not path.exists() or (anchor and anchor not in heading_anchors(path.read_text())):
                broken.append(f"{page}: {target}")
    assert not broken, f"links to missing files or headings: {broken}"


@pytest.mark.parametrize("command", [c for c, (how, *_) in HOW.items() if how == COMPOSE])
def test_readme_lines_that_need_hardware_compose_and_validate(command, data_dir, tmp_path):
    cfg = compose_train(command.split("tvr-train", 1)[1].split(), data_dir, tmp_path)
    validate_train_config(cfg)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, data_dir):
    """A checkpoint made by the documentation's first training line (docs/training.md), for its tvr-eval lines."""
    cwd = tmp_path_factory.mktemp("readme")
    result = run_cli(
        "tvr-train", FIRST_TRAINING_LINE.split()[1:] + SHRINK + [f"hydra.run.dir={cwd / 'run'}"], data_dir, cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, cwd / "run" / "checkpoints" / "best.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, (how, *_) in HOW.items() if how == RUN and c.startswith("tvr-eval")])
def test_readme_eval_lines_run_as_written(command, readme_run, data_dir, tmp_path):
    cwd, checkpoint = readme_run
    other = shutil.copytree(data_dir / "synthetic", tmp_path / "other")
    args = command.replace("outputs/…/checkpoints/best.ckpt", str(checkpoint)).replace(CKPT, f"ckpt_path={checkpoint}")
    args = args.replace("/other", str(other)).split()[1:]
    result = run_cli("tvr-eval", args + QUIET + [f"hydra.run.dir={tmp_path / 'eval'}"], data_dir, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| test | t2v |" in result.stdout or "| val | t2v |" in result.stdout
    if "rerank=dsl" in command:
        assert "(DSL re-ranked)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [c for c, (how, *_) in HOW.items() if how == RUN and c.startswith("tvr-train") and c != FIRST_TRAINING_LINE],
)
def test_readme_train_lines_run_as_written(command, data_dir, tmp_path):
    args = command.split()[1:]
    where = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if "-m" in args else [f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli("tvr-train", args + SHRINK + where, data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = sorted((tmp_path / ("sweep" if "-m" in args else "run")).rglob("metrics.json"))
    assert len(metrics) == (6 if "-m" in args else 1)  # every job of the sweep finished and wrote its results


@pytest.mark.slow
def test_readme_search_lines_run_as_written(readme_run, data_dir, tmp_path):
    """The documented tvr-index / tvr-search lines (docs/search.md), in order, in one folder: the index the first writes is
    the one the others search."""
    _, checkpoint = readme_run
    (tmp_path / "my_videos").mkdir()
    for video in sorted((data_dir / "synthetic" / "videos").glob("test_*.mp4"))[:6]:
        shutil.copy(video, tmp_path / "my_videos" / video.name)
    (tmp_path / "queries.txt").write_text("a red ball\na blue square moves left\n")
    lines = [c for c, (how, *_) in HOW.items() if how == RUN and c.startswith(("tvr-index", "tvr-search"))]
    assert len(lines) == 3
    outputs = []
    for line in lines:
        script, *args = shlex.split(line.replace("outputs/…/checkpoints/best.ckpt", str(checkpoint)))
        result = run_cli(script, args + (["progress=false"] if script == "tvr-index" else []), data_dir, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    assert "indexed 6 videos (6 new, 0 changed since indexed, 0 unreadable retried)" in outputs[0]
    ranked = [line for line in outputs[1].splitlines() if not line.startswith("#")]
    assert len(ranked) == 6 and all(line.endswith(".mp4") for line in ranked)  # top 10 of a 6-video index
    answers = [json.loads(line) for line in outputs[2].splitlines()]
    assert [answer["query"] for answer in answers] == ["a red ball", "a blue square moves left"]
    assert (tmp_path / "results.html").is_file() and (tmp_path / "my_index" / "index.html").is_file()
