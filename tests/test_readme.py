"""Documented means working: every command line of the README is listed here with how the suite runs it,
so a README line that is added or changed without a way to check it fails this file.

Cheap lines run as written, on the small synthetic set with one epoch (appended overrides only shrink
the run); lines that need a GPU, a cluster, weights or a real benchmark compose and validate instead;
what remains says why it is covered elsewhere.
"""

import importlib
import json
import re
import shlex
import shutil

import pytest

from conftest import REPO_ROOT, SMALL_OVERRIDES, compose_train
from test_cli import QUIET, run_cli
from tvr.validation import validate_train_config

README = (REPO_ROOT / "README.md").read_text()
SHRINK = ["trainer.max_epochs=1"] + SMALL_OVERRIDES + QUIET
CKPT = "ckpt_path=…"  # the README's placeholder for "a checkpoint of yours"
# run by the readme_run fixture, whose checkpoint the README's tvr-eval lines evaluate
FIRST_TRAINING_LINE = "tvr-train head=seqtransf head.layers=2 head.heads=2 head.init_from_clip=false"

RUN, COMPOSE, ELSEWHERE = "run", "compose", "elsewhere"
HOW = {
    "make train": (ELSEWHERE, "the full default run (minutes): tools/bench_synthetic.py runs it as written"),
    "make test": (ELSEWHERE, "the command CI runs (.ci/run)"),
    "tvr-eval ckpt_path=outputs/…/checkpoints/best.ckpt": (RUN, None),
    "tvr-eval ckpt_path=… split=val evaluation.rerank=dsl": (RUN, None),
    "tvr-eval ckpt_path=… data.source.root=/other": (RUN, None),
    "tvr-eval ckpt_path=… data=synthetic data.source.root=/other": (RUN, None),
    "tvr-train head=seqtransf head.layers=2 head.heads=2 head.init_from_clip=false": (RUN, None),
    "tvr-train experiment=synthetic_seqtransf logger=wandb": (RUN, None),
    "tvr-train trainer=gpu": (COMPOSE, "needs a GPU"),
    "tvr-train trainer=ddp trainer.devices=4": (COMPOSE, "needs 4 GPUs; 2-process CPU DDP runs in test_cli"),
    "tvr-train trainer.max_epochs=60 ckpt_path=last": (ELSEWHERE, "test_resume continues the newest run of a configuration"),
    "tvr-train ckpt_path=outputs/…/checkpoints/last.ckpt": (ELSEWHERE, "test_resume continues a run by its file"),
    "tvr-train -m head=meanpool,seqtransf seed=0,1,2": (RUN, None),
    "tvr-results multirun/2026-12-01_10-00-00": (ELSEWHERE, "test_sweep runs it on a real sweep of the synthetic set"),
    "sbatch tools/slurm/train.sbatch experiment=clip4clip_meanp_msrvtt data.source.root=/datasets/msrvtt": (
        ELSEWHERE, "needs SLURM; test_slurm runs the script's srun line under stand-in SLURM variables"),
    "tvr-train -m hydra/launcher=slurm trainer=ddp_multinode ckpt_path=last experiment=xpool_msrvtt seed=0,1,2 "
    "data.source.root=/datasets/msrvtt": (ELSEWHERE, "needs SLURM; test_slurm submits a sweep to a stand-in cluster"),
    "python tools/bench_train.py": (ELSEWHERE, "minutes; test_bench_train runs it with few steps"),
    "python tools/bench_train.py --device cuda --backbone vit_b32 --batch-size 128": (ELSEWHERE, "needs a GPU"),
    "tvr-train data=msrvtt backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt data.source.root=/datasets/msrvtt": (
        COMPOSE, "needs CLIP weights and a benchmark; test_backbone loads every weights format"),
    "python tools/compress_videos.py RAW/ data/msrvtt/videos --workers 8": (
        ELSEWHERE, "needs raw videos; test_cli runs the tool on the synthetic videos"),
    "python tools/check_videos.py data=msrvtt --timeout 30": (
        ELSEWHERE, "needs MSR-VTT; test_cli runs the tool on the synthetic set"),
    "python tools/cache_frames.py data=msrvtt backbone=vit_b32 --workers 8": (
        ELSEWHERE, "needs MSR-VTT; test_frame_cache_tool runs it with backbone=vit_b32 on the synthetic set"),
    "tvr-eval backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt head=meanpool data=msrvtt data.source.root=/datasets/msrvtt": (
        ELSEWHERE, "needs CLIP weights and MSR-VTT; test_retriever runs tvr-eval zero-shot on a tiny backbone"),
    "tvr-index my_videos/ ckpt_path=outputs/…/checkpoints/best.ckpt index=my_index": (RUN, None),
    'tvr-search "a dog runs on the beach" index=my_index --top-k 10': (RUN, None),
    "tvr-search --queries queries.txt index=my_index --html results.html": (RUN, None),
    "tvr-index my_videos/ backbone=vit_b32 backbone.weights=/models/ViT-B-32.pt head=meanpool index=clip_index": (
        ELSEWHERE, "needs CLIP weights; test_search indexes a folder with a zero-shot tiny backbone"),
    "python tools/bench_search.py --json bench_search.json": (
        ELSEWHERE, "about 20 minutes; test_bench_search runs it at tiny sizes"),
    "tvr-train head=tempme": (RUN, None),
    "python tools/bench_towers.py --json bench_towers.json": (ELSEWHERE, "minutes; test_bench_towers runs it with --quick"),
    "tvr-train experiment=hbi_estimator_synthetic hydra.run.dir=outputs/hbi_estimator": (
        ELSEWHERE, "test_hbi runs the estimator stage on the small synthetic set and checks estimator.pt"),
    "tvr-train head=hbi head.estimator_ckpt=outputs/hbi_estimator/estimator.pt": (
        ELSEWHERE, "test_hbi trains HBI with the estimator stage's file, then evaluates it without that file"),
    "tvr-eval ckpt_path=… evaluation.report_levels=true": (RUN, None),
    'python tools/explain.py ckpt_path=… --text "a red square moves left" --video clip.mp4 --out explain.png': (
        ELSEWHERE, "test_hbi runs tools/explain.py on a trained HBI checkpoint and a synthetic video"),
}


def readme_commands() -> list[str]:
    """Command lines of the README's bash blocks, without their comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def test_every_readme_command_line_is_exercised():
    commands = readme_commands()
    unknown = [command for command in commands if command not in HOW]
    assert not unknown, f"README command lines with no test; add them to HOW: {unknown}"
    stale = [command for command in HOW if command not in commands]
    assert not stale, f"HOW lists lines the README no longer has: {stale}"


def test_every_python_name_the_readme_documents_imports():
    names = set(re.findall(r"`(tvr(?:\.\w+)+)", README)) | {
        f"tvr.evaluation.{name}" for name in re.findall(r"from tvr\.evaluation import (\w+)", README)}
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
            module = getattr(module, part)  # AttributeError names what the README promises and tvr lacks


@pytest.mark.parametrize("command", [c for c, (how, _) in HOW.items() if how == COMPOSE])
def test_readme_lines_that_need_hardware_compose_and_validate(command, data_dir, tmp_path):
    cfg = compose_train(command.split("tvr-train", 1)[1].split(), data_dir, tmp_path)
    validate_train_config(cfg)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, data_dir):
    """A checkpoint made by the README's first training line, for its tvr-eval lines."""
    cwd = tmp_path_factory.mktemp("readme")
    result = run_cli("tvr-train", FIRST_TRAINING_LINE.split()[1:] + SHRINK + [f"hydra.run.dir={cwd / 'run'}"], data_dir, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, cwd / "run" / "checkpoints" / "best.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, (how, _) in HOW.items() if how == RUN and c.startswith("tvr-eval")])
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
@pytest.mark.parametrize("command", [c for c, (how, _) in HOW.items()
                                     if how == RUN and c.startswith("tvr-train") and c != FIRST_TRAINING_LINE])
def test_readme_train_lines_run_as_written(command, data_dir, tmp_path):
    args = command.split()[1:]
    where = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if "-m" in args else [f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli("tvr-train", args + SHRINK + where, data_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = sorted((tmp_path / ("sweep" if "-m" in args else "run")).rglob("metrics.json"))
    assert len(metrics) == (6 if "-m" in args else 1)  # every job of the sweep finished and wrote its results


@pytest.mark.slow
def test_readme_search_lines_run_as_written(readme_run, data_dir, tmp_path):
    """The README's tvr-index / tvr-search lines, in order, in one folder: the index the first writes is
    the one the others search."""
    _, checkpoint = readme_run
    (tmp_path / "my_videos").mkdir()
    for video in sorted((data_dir / "synthetic" / "videos").glob("test_*.mp4"))[:6]:
        shutil.copy(video, tmp_path / "my_videos" / video.name)
    (tmp_path / "queries.txt").write_text("a red ball\na blue square moves left\n")
    lines = [c for c, (how, _) in HOW.items() if how == RUN and c.startswith(("tvr-index", "tvr-search"))]
    assert len(lines) == 3
    outputs = []
    for line in lines:
        script, *args = shlex.split(line.replace("outputs/…/checkpoints/best.ckpt", str(checkpoint)))
        result = run_cli(script, args + (["progress=false"] if script == "tvr-index" else []), data_dir, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    assert "indexed 6 new videos (0 already indexed, 0 unreadable)" in outputs[0]
    ranked = [line for line in outputs[1].splitlines() if not line.startswith("#")]
    assert len(ranked) == 6 and all(line.endswith(".mp4") for line in ranked)  # top 10 of a 6-video index
    answers = [json.loads(line) for line in outputs[2].splitlines()]
    assert [answer["query"] for answer in answers] == ["a red ball", "a blue square moves left"]
    assert (tmp_path / "results.html").is_file() and (tmp_path / "my_index" / "index.html").is_file()
