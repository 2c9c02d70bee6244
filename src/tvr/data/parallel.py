"""Process pools for the data preparation that runs inside ``tvr-train`` (generation, frame caching)."""

from __future__ import annotations

import signal
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
    return get_context(method).Pool(workers, initializer=_start_worker, initargs=(initializer,))


def _start_worker(initializer: Callable[[], None] | None) -> None:
    # A parent that ignores SIGTERM (a submitit job does) would hand that on to forked workers, and the
    # pool's terminate() at the end of a `with` block would then wait for them forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer()
