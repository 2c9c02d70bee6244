"""A run folder's records (``.hydra/``, ``metrics.json``, ``results.md``, ``checkpoints/``) belong to the run that
made them: a refused or unrelated command must never replace them.

Hydra writes its record of a command (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``) into
``hydra.run.dir`` before tvr's own checks run, so the entry points look at the folder a command line names
first: :func:`refuse_run_records` for a command that would write its own results there (``tvr-eval``), and
:func:`hydra_record_kept` for one that may legitimately continue the run there (``tvr-train ckpt_path=last``)
but may also be refused after Hydra has written.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import OmegaConf

from tvr.atomic import replacing
from tvr.config import compose_config
from tvr.overrides import parse_overrides

HYDRA_RECORDS = ("config.yaml", "hydra.yaml", "overrides.yaml")


def run_dir_override(argv: list[str]) -> Path | None:
    """The folder ``hydra.run.dir=`` names on the command line; None when Hydra chooses one (no such override,
    or one with an interpolation such as ``${now:...}``)."""
    value = parse_overrides(argv).get("hydra.run.dir")
    return None if not value or "${" in value else Path(value)


def named_run_dir(argv: list[str]) -> Path | None:
    """The existing folder ``hydra.run.dir=`` names on the command line (see :func:`run_dir_override`)."""
    folder = run_dir_override(argv)
    return folder if folder is not None and folder.is_dir() else None


def run_records(folder: Path) -> list[str]:
    """What in ``folder`` marks it as an earlier run's (its Hydra record, metrics, checkpoints); a sweep folder
    holding only ``tvr-results``' report is not one."""
    names = [".hydra", "metrics.json", "checkpoints"]
    return [name for name in names if (folder / name).exists()]


def refuse_run_records(argv: list[str], command: str) -> None:
    """Exit (status 2, one ``error:`` line) when ``hydra.run.dir`` names a folder holding an earlier run's
    records, which ``command`` would replace with its own."""
    folder = named_run_dir(argv)
    found = run_records(folder) if folder is not None else []
    if found:
        print(
            f"error: hydra.run.dir: {folder} holds the records of an earlier run ({', '.join(found)}), which "
            f"{command} would replace; pass a new folder, e.g. hydra.run.dir={folder / command.replace('tvr-', '')}",
            file=sys.stderr,
        )
        sys.exit(2)


def refuse_run_dir_inside_data(argv: list[str], config_name: str) -> None:
    """Exit (status 2, one ``error:`` line) when ``hydra.run.dir`` lies inside the data root the command reads
    (``data.source.root``): a run's records would mix with the dataset's files, where a cache rebuild or a
    dataset copy takes them along or away."""
    run_dir = run_dir_override(argv)
    if run_dir is None:
        return
    try:
        root = OmegaConf.select(compose_config([item for item in argv if "=" in item], config_name), "data.source.root")
    except Exception:  # a bad override or an unreadable checkpoint: the command itself reports it by name
        return
    if root and run_dir.resolve().is_relative_to(Path(root).resolve()):
        print(
            f"error: hydra.run.dir: {run_dir} lies inside the data root data.source.root={root}; "
            "pass a run folder outside it (e.g. under outputs/)",
            file=sys.stderr,
        )
        sys.exit(2)


@contextlib.contextmanager
def hydra_record_kept(argv: list[str]) -> Iterator[None]:
    """Run the block (the Hydra entry point); if it does not succeed, put back the ``.hydra/`` record that the
    folder ``hydra.run.dir`` names held before, which Hydra replaced before the command was refused or failed."""
    folder = named_run_dir(argv)
    record = folder / ".hydra" if folder is not None else None
    saved = (
        {name: (record / name).read_bytes() for name in HYDRA_RECORDS if (record / name).is_file()} if record else {}
    )
    try:
        yield
    except BaseException as stop:
        succeeded = isinstance(stop, SystemExit) and stop.code in (0, None)
        if saved and not succeeded:
            for name, content in saved.items():
                with replacing(record / name) as tmp:
                    tmp.write_bytes(content)
        raise
