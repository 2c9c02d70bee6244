"""Naming a sweep's job folders by what the sweep varies.

Hydra's ``override_dirname`` joins every override of a job, so ``tvr-train -m head=meanpool,seqtransf
seed=0,1,2 data.source.root=/datasets/msrvtt trainer=gpu ...`` names each folder after all of them,
repeated in every job and soon past the 255-byte limit of a file name. :func:`job_folder_name` keeps the
overrides the command line sweeps (``head``, ``seed``), in Hydra's ``key=value,key=value`` form. Where the
sweep's command line is not visible (a job that a cluster launcher runs in another process) it falls back
to every override, shortened with a digest when too long; both are functions of the job's overrides
alone, so a requeued job finds its folder again.
"""

from __future__ import annotations

import hashlib
import sys

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

MAX_NAME = 200  # bytes; file systems allow 255 per folder name


def swept_keys(argv: list[str]) -> set[str]:
    """The keys a Hydra command line sweeps (``head=a,b``, ``seed=range(3)``, ``lr=choice(...)``)."""
    arguments = [item for item in argv if "=" in item and not item.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
    except Exception:  # not a Hydra command line (a launcher's own process): no sweep to read
        return set()
    return {override.key_or_group for override in overrides if override.is_sweep_override()}


def job_folder_name(task_overrides, exclude_keys) -> str:
    """The folder of one sweep job: its swept overrides, or all of them when the sweep is not visible."""
    excluded = set(exclude_keys or ())
    items = sorted(item for item in task_overrides if item.split("=", 1)[0].lstrip("+~") not in excluded)
    swept = swept_keys(sys.argv[1:])
    chosen = [item for item in items if item.split("=", 1)[0].lstrip("+~") in swept] or items
    name = ",".join(chosen).replace("/", "-") or "default"  # a '/' would nest folders
    if len(name.encode()) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME - 12].decode(errors="ignore") + "~" + digest
    return name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("tvr_job_folder"):
        OmegaConf.register_new_resolver("tvr_job_folder", job_folder_name)
