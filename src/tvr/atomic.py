"""Files written whole or not at all.

A crash or pre-emption while writing must never leave a truncated file under the target's name (a
``last.ckpt`` that does not load, a ``metrics.json`` cut in half, a video that looks compressed): the bytes go
to a temporary file in the same folder, reach the disk, then are renamed over the target in one step. A write
that fails removes its temporary file; one killed outright leaves ``.<target name>.<random>.tmp`` behind,
which :func:`temp_files` finds.

The temporary file is opened like any other file, so the result gets the umask's permissions (mkstemp's
would be 0600).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tvr.errors import DiskFullError, is_disk_full

TEMP_SUFFIX = ".tmp"


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new content to (by any writer: torch, faiss, an encoder);
    when the block ends without error, the file is flushed to disk and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(path) from error  # the file and the disk named, not the writer's own words
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch  # here, so that the writers of videos and annotations (spawned workers elsewhere than Linux) stay torch-free

    with replacing(path) as tmp:
        torch.save(obj, tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(payload, indent=indent))


def temp_files(folder: Path) -> list[Path]:
    """The temporary files of writes into ``folder`` that were killed half-way (or are in progress)."""
    return sorted(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
