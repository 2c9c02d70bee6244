"""Naming a sweep's job folders by what the sweep varies.

Hydra's ``override_dirname`` joins every override of a job, so ``tvr-train -m head=meanpool,seqtransf
seed=0,1,2 data.source.root=/datasets/msrvtt trainer=gpu ...`` names each folder after all of them,
repeated in every job and soon past the 255-byte limit of a file name. :func:`job_folder_name` keeps the
overrides the sweep varies (``head``, ``seed``), in Hydra's ``key=value,key=value`` form. It reads them
from the sweep's ``multirun.yaml``, which Hydra writes before any job starts, so it works the same in a
job that a cluster launcher runs in another process. Without that file it names the job by every
override, shortened with a digest when too long. Both depend on the job's overrides alone, so a
requeued job finds its folder again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from tvr.overrides import read_overrides

MAX_NAME = 200  # bytes; file systems allow 255 per folder name


def swept_keys(overrides: list[str]) -> set[str]:
    """The keys a sweep's command-line overrides vary (``head=a,b``, ``seed=range(3)``, ``lr=choice(...)``)."""
    return {
        override.key_or_group
        for _, override in read_overrides(overrides)
        if override is not None and override.is_sweep_override()
    }


def sweep_overrides(sweep_dir: str) -> list[str]:
    """The command-line overrides of the sweep in ``sweep_dir`` (none when it has no multirun.yaml)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    return ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("overrides", {}).get("task") or []


def job_folder_name(task_overrides, exclude_keys, sweep_dir: str) -> str:
    """The folder of one sweep job: its swept overrides, or all of them when the sweep is not known."""
    swept = swept_keys(sweep_overrides(sweep_dir))
    excluded = set(exclude_keys or ()) - swept  # a swept location (backbone.weights=a.pt,b.pt) still names its jobs
    items = sorted(item for item in task_overrides if item.split("=", 1)[0].lstrip("+~") not in excluded)
    chosen = [item for item in items if item.split("=", 1)[0].lstrip("+~") in swept] or items
    name = ",".join(chosen).replace("/", "-") or "default"  # a '/' would nest folders
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME - 12].decode(errors="ignore") + "~" + digest
    return name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("tvr_job_folder"):
        OmegaConf.register_new_resolver("tvr_job_folder", job_folder_name)
