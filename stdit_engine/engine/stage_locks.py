"""Which stages of concurrent `generate()` calls may run at the same time on one engine.

A stage's shared mutable state is its model's placement (weights moved onto the device and back),
and for the denoise stage the CUDA-graph cache, whose static buffers a replay reads and writes.
Each stage therefore runs under a lock. With `separate` locks (weights resident on one device),
one call's denoise can run beside another call's encode or decode; with one lock for all stages
(placements that move weights, whose memory plan has one stage on the device at a time), stages
of different calls take turns. Calls interleave between stages either way.
"""
from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager

from .cancel import CancelToken, raise_if_cancelled

STAGES = ("encode", "denoise", "decode")
CANCEL_POLL_SECONDS = 0.05  # how often a call waiting for a stage looks at its CancelToken


class StageLocks:
    def __init__(self, separate: bool):
        # Re-entrant: a whole-call hold (hold_all) contains the stages' own holds.
        shared = threading.RLock()
        self._locks = {stage: threading.RLock() if separate else shared for stage in STAGES}

    @contextmanager
    def hold(self, stage: str, cancel: CancelToken | None = None):
        """Exclusive use of `stage`; a cancelled wait raises Cancelled."""
        lock = self._locks[stage]
        if cancel is None:
            lock.acquire()
        else:
            while not lock.acquire(timeout=CANCEL_POLL_SECONDS):
                cancel.raise_if_cancelled()
        try:
            raise_if_cancelled(cancel)
            yield
        finally:
            lock.release()

    @contextmanager
    def hold_all(self, cancel: CancelToken | None = None):
        """Every stage, for a whole call (taken in STAGES order, so holders of single stages cannot deadlock with it)."""
        with ExitStack() as stack:
            for stage in STAGES:
                stack.enter_context(self.hold(stage, cancel))
            yield
