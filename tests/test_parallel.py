"""The data-preparation pool ends cleanly even under a parent that ignores SIGTERM (a submitit job)."""

import signal
import threading
import time

from tvr.data.parallel import process_pool


def _square(value: int) -> int:
    return value * value


def test_a_pool_terminates_when_its_parent_ignores_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with process_pool(2) as pool:
            assert pool.map(_square, range(4)) == [0, 1, 4, 9]
            busy = [pool.apply_async(time.sleep, (120,)) for _ in range(2)]  # e.g. encoding a long video
            time.sleep(1)
            ended = threading.Thread(target=pool.terminate, daemon=True)  # what leaving the `with` block calls
            ended.start()
            ended.join(timeout=30)
            assert not ended.is_alive() and not any(result.ready() for result in busy), (
                "terminate() hung: the workers ignored SIGTERM"
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
