"""``tvr-index`` and ``tvr-search``: the command lines over :mod:`tvr.search`.

``tvr-index VIDEOS_DIR ckpt_path=... index=OUT`` takes Hydra overrides (``conf/index.yaml``), so a
zero-shot model is chosen as everywhere else (``backbone=vit_b32 backbone.weights=... head=meanpool``).
``tvr-search "a dog runs on the beach" index=OUT [--top-k 10]`` prints ranked videos; ``--queries FILE``
searches one query per line and prints JSON lines; ``--html FILE`` writes a page with thumbnails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from hydra.errors import HydraException

from tvr.atomic import write_text
from tvr.config import compose_config, to_plain
from tvr.errors import UserInputError, exit_on_user_error
from tvr.search.build import build_index
from tvr.search.model import data_settings, load_retriever, model_record
from tvr.search.page import Hit, index_page, results_page
from tvr.search.searcher import Searcher, SearchOptions
from tvr.search.store import VideoIndexStore

log = logging.getLogger(__name__)


# A Hydra override's key: a config path, optionally with +/~/++ (a path like /data/run=1/videos is not one).
OVERRIDE_KEY = re.compile(r"[+~]{0,2}[A-Za-z_][\w.@/-]*")


def is_override(item: str) -> bool:
    """Whether a command-line argument is a ``key=value`` override rather than a path that holds ``=``
    (an existing file or folder is always a path)."""
    key, equals, _ = item.partition("=")
    return bool(equals) and OVERRIDE_KEY.fullmatch(key) is not None and not Path(item).exists()


def split_arguments(argv: list[str], usage: str) -> tuple[list[str], list[str]]:
    """Positional arguments and ``key=value`` overrides, in order."""
    positional = [item for item in argv if item.startswith("-") or not is_override(item)]
    overrides = [item for item in argv if item not in positional]
    if any(item.startswith("-") for item in positional):
        raise UserInputError(f"unknown option {next(i for i in positional if i.startswith('-'))}; usage: {usage}")
    return positional, overrides


INDEX_USAGE = "tvr-index VIDEOS_DIR ckpt_path=<checkpoint> index=<folder> [--retry-unreadable] [key=value ...]"
RETRY_UNREADABLE = "--retry-unreadable"  # decode again the videos earlier builds could not read


@exit_on_user_error
def run_index(argv: list[str]) -> dict:
    retry_unreadable = RETRY_UNREADABLE in argv
    positional, overrides = split_arguments([item for item in argv if item != RETRY_UNREADABLE], INDEX_USAGE)
    if len(positional) != 1:
        raise UserInputError(f"give exactly one folder of videos (got {len(positional)}); usage: {INDEX_USAGE}")
    try:
        cfg = compose_config(overrides, config_name="index")
    except HydraException as error:  # an unknown option or group choice: Hydra's message lists the valid ones
        raise UserInputError(f"{error}\nusage: {INDEX_USAGE}") from error
    if cfg.get("index") in (None, "???") or str(cfg.index) == "???":
        raise UserInputError(f"index: has no value; pass index=<folder to write>; usage: {INDEX_USAGE}")
    record = model_record(cfg)  # before any video is opened
    retriever = load_retriever(record)
    sampler, max_words = data_settings(retriever, record, to_plain(cfg.sampler) if cfg.sampler else None)
    report = build_index(
        retriever,
        Path(positional[0]),
        Path(cfg.index),
        sampler=sampler,
        max_words=max_words,
        model=record,
        backend=cfg.backend,
        num_workers=cfg.num_workers,
        batch_size=cfg.batch_size,
        shard_size=cfg.shard_size,
        device=cfg.device,
        progress=cfg.progress,
        retry_unreadable=retry_unreadable,
    )
    store = VideoIndexStore.open(cfg.index)
    if cfg.html:
        contents = store.load()
        videos = [
            Hit(
                rank=row + 1,
                score=float("nan"),
                path=path,
                duration=float(contents.durations[row]),
                thumbnail=contents.thumbnails[row],
            )
            for row, path in enumerate(contents.paths)
        ]
        write_text(Path(cfg.index) / "index.html", index_page(index_summary(store), videos, store.unreadable))
    retry = (
        f", {report.unreadable_skipped} unreadable before (not retried: pass --retry-unreadable)"
        if report.unreadable_skipped
        else ""
    )
    print(
        f"indexed {report.indexed} videos ({report.new} new, {report.changed} changed since indexed, "
        f"{report.retried} unreadable retried) in {report.seconds:.1f} s; {report.unchanged} unchanged{retry}; "
        f"{len(report.unreadable)} unreadable now; {report.total_in_index} videos in {cfg.index}"
    )
    for path, reason in report.unreadable.items():
        print(f"  unreadable: {path}: {reason}")
    return {"indexed": report.indexed, "unreadable": report.unreadable, "total": report.total_in_index}


def index_summary(store: VideoIndexStore) -> dict:
    sampler = store.settings["sampler"]
    return {
        **store.identity,
        "videos": len(store),
        "unreadable": len(store.unreadable),
        "sampler": f"{sampler.get('sampler')}, {sampler.get('max_frames')} frames",
        "model": store.model.get("ckpt_path") or f"zero-shot {store.model.get('backbone', {}).get('model_name')}",
    }


def search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvr-search",
        description="Search an index built by tvr-index with text.",
        epilog="index=OUT and ckpt_path=FILE may also be given as key=value.",
    )
    parser.add_argument("query", nargs="?", help="the text to search for")
    parser.add_argument("--index", help="the index folder (tvr-index ... index=OUT)")
    parser.add_argument("--ckpt-path", help="the index's checkpoint, if it has moved")
    parser.add_argument("--queries", help="a file of queries, one per line: JSON lines out")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--rerank-k", type=int, default=100, help="text-conditioned heads: candidates re-scored per query"
    )
    parser.add_argument("--factory", default="Flat", help="faiss index: Flat (exact) or e.g. IVF1024,PQ64")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    parser.add_argument(
        "--check-recall",
        action="store_true",
        help="two-stage search: also score every video with the head and report the first stage's recall",
    )
    parser.add_argument("--html", help="write a page with the results and their thumbnails")
    parser.add_argument("--device", default="cpu")
    return parser


SEARCH_KEYS = ("index", "ckpt_path")


@exit_on_user_error
def run_search(argv: list[str]) -> list:
    parser = search_parser()
    # Only these keys are overrides: anything else with "=" is query text ("E=mc2 physics lecture").
    is_keyed = ["=" in item and item.partition("=")[0] in SEARCH_KEYS for item in argv]
    keyed = dict(item.split("=", 1) for item, is_key in zip(argv, is_keyed) if is_key)
    args = parser.parse_args([item for item, is_key in zip(argv, is_keyed) if not is_key])
    index = keyed.get("index") or args.index
    if not index:
        raise UserInputError("no index given; pass index=<folder written by tvr-index> (or --index)")
    if (args.query is None) == (args.queries is None):
        raise UserInputError("give either a query or --queries FILE (one query per line)")
    if args.top_k < 1 or args.rerank_k < 1:
        raise UserInputError(f"--top-k ({args.top_k}) and --rerank-k ({args.rerank_k}) must be at least 1")
    if args.nprobe < 1:  # before the model loads
        raise UserInputError(f"--nprobe ({args.nprobe}) must be at least 1 (inverted lists visited per query)")
    if args.html:
        check_writable(Path(args.html), "--html")
    queries = [args.query] if args.queries is None else read_queries(Path(args.queries))
    searcher = Searcher(
        index, keyed.get("ckpt_path") or args.ckpt_path, factory=args.factory, nprobe=args.nprobe, device=args.device
    )
    options = SearchOptions(top_k=args.top_k, rerank_k=args.rerank_k, check_recall=args.check_recall)
    results = searcher.search(queries, options)
    if args.queries is None:
        print_ranked(results[0])
    else:
        for result in results:
            print(json.dumps(result.as_json()))
    if args.html:
        try:
            write_text(args.html, results_page(results, searcher.summary()))
        except OSError as error:  # what check_writable cannot foresee (a full disk, a read-only mount)
            raise UserInputError(f"--html {args.html}: cannot write it ({error}); pass another file") from error
        print(f"wrote {args.html}", file=sys.stderr)
    return results


def read_queries(path: Path) -> list[str]:
    if not path.is_file():
        raise UserInputError(f"--queries {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"--queries {path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from error
    queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise UserInputError(f"--queries {path}: the file holds no query (one per line)")
    return queries


def check_writable(path: Path, option: str) -> None:
    """Refuse, before any work, a file that cannot be written: its nearest existing folder above must be a
    writable folder (the missing ones are created when it is written)."""
    if path.is_dir():
        raise UserInputError(f"{option} {path} is a folder; pass a file name, e.g. {path / 'results.html'}")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        problem = "is not a folder" if not parent.is_dir() else "is not writable"
        raise UserInputError(f"{option} {path}: cannot write there ({parent} {problem}); pass another file")


def print_ranked(result) -> None:
    print(f"# {result.query}\n# {result.note}")
    for hit in result.hits:
        print(f"{hit.rank:4d}  {hit.score:8.4f}  {hit.duration:7.1f}s  {hit.path}")


def index_main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_index(sys.argv[1:])


def search_main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_search(sys.argv[1:])
