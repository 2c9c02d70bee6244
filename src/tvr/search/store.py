"""The on-disk video index that ``tvr-index`` writes and ``tvr-search`` reads.

An index is one folder::

    OUT/manifest.json      which model and settings built it, its shards, the videos that could not be read
    OUT/shard-00000.pt     up to ``shard_size`` videos: paths, file fingerprints, durations,
                           representation, summary, thumbnails
    OUT/shard-00001.pt     ...

The manifest is the single source of truth: a shard counts only once the manifest lists it. A shard is
written first and the manifest after it, both atomically, so a build killed at any moment leaves either
the old index or the new one, plus at worst an unlisted shard file that the next build overwrites or
removes; a video is never listed twice. Each video is stored with its file's fingerprint (size and
modification time), so a build can tell a video replaced at the same path and re-encode it. The manifest
records each shard's sha256, checked whenever a shard is loaded whole, so a damaged shard is refused
rather than searched. Only one build at a time may write to a folder (:func:`build_lock`), so two builds
never interleave their shards and manifest updates. Every shard loads with
``torch.load(weights_only=True)`` (JPEG bytes are uint8 tensors, strings are plain lists), so opening an
index cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from tvr.atomic import atomic_torch_save, write_json
from tvr.data.transforms import Preprocessing
from tvr.errors import NonFiniteScoresError, UserInputError
from tvr.models.heads.base import Repr, cat_reprs

FORMAT = 1
MANIFEST = "manifest.json"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".pt"
# Held for the whole of a build; the holder file beside it says who holds it (the lock file itself is the
# lock library's to open and truncate).
BUILD_LOCK, BUILD_HOLDER = ".build.lock", ".build.lock.holder.json"
# Temporary files of the atomic writes (tvr.atomic): ".<target name>.<random>.tmp".
TMP_PREFIXES = (f".{SHARD_PREFIX}", f".{MANIFEST}.")


class IndexMismatchError(UserInputError):
    """An existing index built with another model or other settings than the ones given."""


class IndexNotFoundError(UserInputError):
    """A folder that is not (yet) a video index."""


class IndexCorruptError(UserInputError):
    """An index whose manifest or shard files cannot be read, or disagree with each other."""


class IndexBusyError(UserInputError):
    """Another build is writing to the index folder."""


@contextmanager
def build_lock(folder: str | Path) -> Iterator[None]:
    """Hold the index folder ``folder`` (created if missing) for one build; a second build, in this or any
    other process on a file system with working locks, is refused with who holds it (pid, host, start)."""
    folder = Path(folder).resolve()
    _refuse_foreign_folder(folder)  # before the lock file is put there
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / BUILD_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout as error:
        raise IndexBusyError(
            f"another tvr-index build is writing to {folder} ({_describe_holder(folder)}); wait for it to finish "
            "and run this build again (it adds only what is missing), or use another index folder"
        ) from error
    holder = folder / BUILD_HOLDER
    try:
        write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}, indent=None)
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _refuse_foreign_folder(folder: Path) -> None:
    """Refuse a folder that holds files but no index: an index would mix its files with the user's."""
    if (folder / MANIFEST).is_file() or not folder.exists():
        return
    if any(path.name not in (BUILD_LOCK, BUILD_HOLDER) for path in folder.iterdir()):
        raise IndexNotFoundError(
            f"{folder} is not empty but holds no {MANIFEST}, so it is not a tvr index; pass a new or empty "
            "folder as index= (an index writes its own files there)"
        )


def _describe_holder(folder: Path) -> str:
    try:
        holder = json.loads((folder / BUILD_HOLDER).read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing this
        return "its pid, host and start time are not written yet"


@dataclass
class IndexContents:
    """Every indexed video, in index order; row ``i`` of each field is video ``paths[i]``.

    An empty index has an empty ``representation`` dict and a ``[0, 0]`` summary."""

    paths: list[str]
    durations: torch.Tensor  # float32 [N], seconds
    representation: Repr  # the head's per-video representation, float32 on the CPU
    summary: torch.Tensor  # float32 [N, D] unit vectors for a first-stage vector search
    thumbnails: list[bytes]  # JPEG bytes of each video's strip of sampled frames


class VideoIndexStore:
    """Read and append to one index folder; open it with :meth:`create_or_open` (build) or :meth:`open` (search)."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder = folder
        self._manifest = manifest
        self._fingerprints: dict[str, str] | None = None  # path -> fingerprint, read from the shards on first use

    # ------------------------------------------------------------------ opening
    @classmethod
    def create_or_open(cls, folder: str | Path, identity: dict, model: dict, settings: dict) -> "VideoIndexStore":
        """A new index in ``folder``, or the existing one when it was built with this ``identity`` and
        these ``settings`` (anything else is refused: one index must hold comparable vectors only).

        ``model`` (how to rebuild the model, e.g. the checkpoint path) is stored as given; reopening with
        the same identity replaces it, since the caller has just loaded identical weights from there."""
        folder = Path(folder).resolve()
        identity, settings = _as_json(identity), _as_json(settings)
        if (folder / MANIFEST).is_file():
            store = cls(folder, _read_manifest(folder))
            store._refuse_mismatch(identity, settings)
            store._remove_unlisted_files()
            if store.model != _as_json(model):
                store._manifest["model"] = _as_json(model)
                store._write_manifest()
            return store
        _refuse_foreign_folder(folder)
        now = _now()
        manifest = {
            "format": FORMAT,
            "identity": identity,
            "model": _as_json(model),
            "settings": settings,
            "shards": [],
            "unreadable": {},
            "created": now,
            "updated": now,
        }
        store = cls(folder, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | Path) -> "VideoIndexStore":
        """An existing index, read-only in spirit: nothing in the folder is changed."""
        folder = Path(folder).resolve()
        if not (folder / MANIFEST).is_file():
            what = "does not exist" if not folder.exists() else f"holds no {MANIFEST}"
            raise IndexNotFoundError(
                f"no video index at {folder} (the folder {what}); build it with tvr-index VIDEOS_DIR ... index={folder}"
            )
        return cls(folder, _read_manifest(folder))

    def _refuse_mismatch(self, identity: dict, settings: dict) -> None:
        if identity != self.identity:
            raise IndexMismatchError(
                f"the index {self.folder} was built with model {self.identity} (from {self.model}), but the model "
                f"given now is {identity}; vectors of different models cannot be mixed or compared. Use another "
                f"index folder (index=...) for this model, or pass the index's own checkpoint"
            )
        if settings != self.settings:
            raise IndexMismatchError(
                f"the index {self.folder} was built with settings {self.settings}, but the settings given now are "
                f"{settings}; use another index folder (index=...) for these settings, or build with the index's own settings"
            )

    def _remove_unlisted_files(self) -> None:
        """Shard and temporary files a crashed build left behind; the manifest does not list them, so they
        hold nothing the index counts (they would only be overwritten later, or confuse a reader)."""
        listed = {shard["file"] for shard in self._manifest["shards"]}
        for path in self.folder.iterdir():
            name = path.name
            orphan_shard = name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX) and name not in listed
            leftover_tmp = name.startswith(TMP_PREFIXES) and name.endswith(".tmp")
            if (orphan_shard or leftover_tmp) and path.is_file():
                path.unlink()

    # ------------------------------------------------------------------ what it holds
    @property
    def identity(self) -> dict:
        return self._manifest["identity"]

    @property
    def settings(self) -> dict:
        return self._manifest["settings"]

    @property
    def model(self) -> dict:
        return self._manifest["model"]

    @property
    def unreadable(self) -> dict[str, str]:
        """Videos that could not be decoded: absolute path -> reason."""
        return dict(self._manifest["unreadable"])

    def __len__(self) -> int:
        return sum(shard["videos"] for shard in self._manifest["shards"])

    def contents_digest(self) -> str:
        """Changes whenever the indexed videos do (a shard added, or rewritten without replaced videos), so a
        cache derived from them (a trained faiss index) can be named by it."""
        return hashlib.sha256(json.dumps(self._manifest["shards"], sort_keys=True).encode()).hexdigest()[:16]

    def fingerprints(self) -> dict[str, str]:
        """Every indexed video: path -> the fingerprint of the file it was encoded from ("" in shards
        written before fingerprints were recorded: such videos count as unchanged)."""
        if self._fingerprints is None:
            # mmap: only the pickled lists are read, not the (possibly gigabytes of) tensors
            self._fingerprints = {}
            for entry in self._manifest["shards"]:
                shard = self._read_shard(entry, mmap=True)
                self._fingerprints.update(zip(shard["paths"], _shard_fingerprints(shard)))
        return self._fingerprints

    def load(self) -> IndexContents:
        shards = [self._read_shard(shard) for shard in self._manifest["shards"]]
        if not shards:
            return IndexContents([], torch.zeros(0), {}, torch.zeros(0, 0), [])
        return IndexContents(
            paths=[path for shard in shards for path in shard["paths"]],
            durations=torch.cat([shard["durations"] for shard in shards]),
            representation=cat_reprs([shard["representation"] for shard in shards]),
            summary=torch.cat([shard["summary"] for shard in shards]),
            thumbnails=[bytes(thumb.numpy()) for shard in shards for thumb in shard["thumbnails"]],
        )

    def _read_shard(self, entry: dict, mmap: bool = False) -> dict:
        path = self.folder / entry["file"]
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except FileNotFoundError as error:
            raise IndexCorruptError(
                f"{path} is listed in {self.folder / MANIFEST} but missing; rebuild the index"
            ) from error
        except Exception as error:  # torch raises many types for a damaged file
            raise IndexCorruptError(
                f"cannot read index shard {path} ({type(error).__name__}: {error}); rebuild the index"
            ) from error
        if len(shard["paths"]) != entry["videos"]:
            raise IndexCorruptError(
                f"index shard {path} holds {len(shard['paths'])} videos but the manifest says {entry['videos']}; rebuild the index"
            )
        if not mmap:
            if "sha256" in entry and _sha256(path) != entry["sha256"]:  # indexes from before checksums lack it
                raise IndexCorruptError(
                    f"index shard {path} is damaged: its sha256 differs from the one {self.folder / MANIFEST} "
                    "recorded when it was written; rebuild the index into a new folder"
                )
            bad = _non_finite_fields(shard)
            if bad:
                raise IndexCorruptError(
                    f"index shard {path} holds NaN or infinite values in {', '.join(bad)}; rebuild the index"
                )
        return shard

    # ------------------------------------------------------------------ writing
    def append_shard(
        self,
        paths: list[str],
        durations: torch.Tensor,
        representation: Repr,
        summary: torch.Tensor,
        thumbnails: list[bytes],
        fingerprints: list[str] | None = None,
    ) -> None:
        """Add videos as one new shard; floating tensors are stored as float32 on the CPU. ``fingerprints``
        (see :func:`file_fingerprint`) identify the files encoded; unknown ("") when not given."""
        fingerprints = [""] * len(paths) if fingerprints is None else [str(value) for value in fingerprints]
        count = len(paths)
        sizes = {
            "durations": len(durations),
            "summary": len(summary),
            "thumbnails": len(thumbnails),
            "fingerprints": len(fingerprints),
            **{f"representation[{key!r}]": len(value) for key, value in representation.items()},
        }
        wrong = {name: size for name, size in sizes.items() if size != count}
        if wrong:
            raise ValueError(f"a shard of {count} paths got other item counts: {wrong}")
        again = self.fingerprints().keys() & set(paths)
        if again or len(set(paths)) != count:
            raise ValueError(f"videos already in the index or repeated in the shard: {sorted(again)[:5]}")
        shard = {
            "paths": [str(path) for path in paths],
            "fingerprints": fingerprints,
            "durations": _cpu_float32(durations),
            "representation": {key: _cpu_float32(value) for key, value in representation.items()},
            "summary": _cpu_float32(summary),
            "thumbnails": [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in thumbnails],
        }
        bad = _non_finite_fields(shard)
        if bad:  # refused here, not found by a search that ranks a NaN video first or last
            raise NonFiniteScoresError(f"NaN or infinite values in {', '.join(bad)} of videos {paths[:5]}...")
        self._manifest["shards"].append(self._save_shard(shard))
        self._write_manifest()
        self._fingerprints.update(zip(shard["paths"], fingerprints))

    def remove_videos(self, paths: set[str]) -> None:
        """Drop these videos' entries (e.g. files replaced since they were encoded): each shard holding any
        is written anew without them, listed in its old one's place, and the old file removed after."""
        indexed = self.fingerprints()
        kept_entries, replaced = [], []
        for entry in self._manifest["shards"]:
            if not paths.intersection(self._read_shard(entry, mmap=True)["paths"]):
                kept_entries.append(entry)
                continue
            shard = self._read_shard(entry)
            rows = [row for row, path in enumerate(shard["paths"]) if path not in paths]
            replaced.append(entry["file"])
            if rows:
                kept_entries.append(self._save_shard(_select_rows(shard, rows), taken=kept_entries))
        if not replaced:
            return
        self._manifest["shards"] = kept_entries
        self._write_manifest()
        for name in replaced:
            (self.folder / name).unlink(missing_ok=True)
        for path in paths:
            indexed.pop(path, None)

    def _save_shard(self, shard: dict, taken: list[dict] = ()) -> dict:
        """Write ``shard`` under a name no listed shard (nor one in ``taken``) uses; its manifest entry."""
        used = [
            int(entry["file"][len(SHARD_PREFIX) : -len(SHARD_SUFFIX)]) for entry in [*self._manifest["shards"], *taken]
        ]
        name = f"{SHARD_PREFIX}{max(used, default=-1) + 1:05d}{SHARD_SUFFIX}"
        atomic_torch_save(shard, self.folder / name)
        return {"file": name, "videos": len(shard["paths"]), "sha256": _sha256(self.folder / name)}

    def add_unreadable(self, reasons: dict[str, str]) -> None:
        """Record videos that could not be decoded (path -> reason), so the report lists them and a rebuild skips them."""
        if reasons:
            self._manifest["unreadable"].update({str(path): str(reason) for path, reason in reasons.items()})
            self._write_manifest()

    def forget_unreadable(self, paths: list[str]) -> None:
        """Stop listing these videos as unreadable, so that a build decodes them again."""
        if any(path in self._manifest["unreadable"] for path in paths):
            for path in paths:
                self._manifest["unreadable"].pop(path, None)
            self._write_manifest()

    def _write_manifest(self) -> None:
        self._manifest["updated"] = _now()
        write_json(self.folder / MANIFEST, self._manifest, indent=1)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise IndexCorruptError(f"cannot read {path} ({error}); rebuild the index into a new folder") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise IndexCorruptError(
            f"{path} is not a format-{FORMAT} tvr index manifest (format: {found}); rebuild the index"
        )
    settings = manifest.get("settings", {})
    if "image_size" in settings:
        # written before the settings recorded the backbone's whole preprocessing: tvr then fed every model
        # open_clip's default preprocessing (OpenAI CLIP's mean/std, bicubic, short side) at that size
        settings["preprocessing"] = Preprocessing(settings.pop("image_size")).describe()
    return manifest


def file_fingerprint(path: str | Path) -> str:
    """What identifies a file's content cheaply: its size and modification time (ns). A video replaced at
    the same path changes it (a copy, a re-encode, a download), so the index re-encodes it."""
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _shard_fingerprints(shard: dict) -> list[str]:
    return shard.get("fingerprints") or [""] * len(shard["paths"])  # shards from before fingerprints lack it


def _select_rows(shard: dict, rows: list[int]) -> dict:
    index = torch.tensor(rows, dtype=torch.long)
    fingerprints = _shard_fingerprints(shard)
    return {
        "paths": [shard["paths"][row] for row in rows],
        "fingerprints": [fingerprints[row] for row in rows],
        "durations": shard["durations"][index].contiguous(),
        "representation": {key: value[index].contiguous() for key, value in shard["representation"].items()},
        "summary": shard["summary"][index].contiguous(),
        "thumbnails": [shard["thumbnails"][row].clone() for row in rows],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _non_finite_fields(shard: dict) -> list[str]:
    """The float fields of a shard holding NaN or inf: a score against them would be NaN or +-inf."""
    fields = {
        "durations": shard["durations"],
        "summary": shard["summary"],
        **{f"representation[{key!r}]": value for key, value in shard["representation"].items()},
    }
    return [name for name, value in fields.items() if value.is_floating_point() and not torch.isfinite(value).all()]


def _as_json(value: dict) -> dict:
    """The value as it reads back from the manifest (tuples become lists), so comparisons are like for like."""
    return json.loads(json.dumps(value))


def _cpu_float32(tensor: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 from a mixed-precision encoder would make searches depend on the build's device
    tensor = torch.as_tensor(tensor).detach().cpu()
    return tensor.float().contiguous() if tensor.is_floating_point() else tensor.contiguous()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
