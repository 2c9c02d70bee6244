"""Process pools for the data preparation that runs inside ``tvr-train`` (generation, frame caching)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.pool import Pool


def process_pool(workers: int, initializer: Callable[[], None] | None = None) -> Pool:
    """A pool whose workers inherit the parent's imports.

    Spawned workers re-run the imports of ``__main__``; under ``tvr-train`` that is Lightning and
    open_clip, about 10 s per worker before any work starts. Forked workers, as DataLoader workers on
    Linux, start at once. Elsewhere fork is unsafe (macOS), so spawn is kept there.
    """
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return get_context(method).Pool(workers, initializer=initializer)
