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

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tvr.errors import DiskFullError

TEMP_SUFFIX = ".tmp"
FULL_BELOW_BYTES = 2**20  # free space under which a failed write is taken for a full disk


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
        full = not isinstance(error, DiskFullError) and disk_full(error, path.parent)  # before the space is freed
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(path) from error  # the file and the disk named, not the writer's own words
        raise


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a write into ``folder`` failed because its disk is full: ENOSPC in the error or the errors it was
    raised from or during, or no space left there now. torch's writer reports a full disk as its own
    ``RuntimeError`` ("unexpected pos ...", during "iostream error"), without the errno."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


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
