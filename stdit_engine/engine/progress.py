"""Progress and cancellation of the denoising loop, counted in steps the device has completed.

A sampler's loop calls `monitor.step_queued()` after queuing each step. On CUDA the monitor then
records an event on the stream the step ran on; events are read with `query()` (no wait), except
that the host never has more than LOOKAHEAD_STEPS steps queued and not completed: before it
returns to queue another one it waits for the oldest (a blocking-sync event, so the waiting thread
sleeps rather than spins). That wait does not drain the device's queue, so the loop stays as
sync-free as before; it bounds how far the host can run ahead, so a cancellation takes effect
within LOOKAHEAD_STEPS + 1 steps of device time. Off CUDA a step is complete once queued.

`report(done, total)` is called once for each completed step, in order, from the calling thread:
done counts the steps completed over the whole call (all its prompt batches), total is every step
it will run. A cancelled call stops at its next step with `Cancelled`, after waiting for the steps
already queued (at most LOOKAHEAD_STEPS + 1), so no device work of it outlives the call.
"""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Callable

import torch

from ..errors import ConfigError
from .cancel import CancelToken, raise_if_cancelled

# Steps the host may have queued beyond those the device has completed. Two keep the device's queue
# from running dry while the host launches the next step, and bound a cancellation's delay.
LOOKAHEAD_STEPS = 2

ProgressFn = Callable[[int, int], None]


class StepMonitor:
    def __init__(self, total: int, device: torch.device, report: ProgressFn | None = None,
                 cancel: CancelToken | None = None, lookahead: int = LOOKAHEAD_STEPS):
        self.total = total
        self.device = device
        self.report = report
        self.cancel = cancel
        self.lookahead = lookahead
        self.done = 0
        self._pending: deque = deque()  # events of queued steps not yet seen complete, oldest first
        self._spare: list = []  # completed events, recorded again for later steps

    def check_cancelled(self) -> None:
        raise_if_cancelled(self.cancel)

    @contextmanager
    def loop(self):
        """One denoising loop. On the way out it waits for the loop's queued steps (reporting them,
        unless the loop failed), so that nothing it queued is still running afterwards."""
        self.check_cancelled()
        try:
            yield self
            while self._pending:
                self._pending[0].synchronize()
                self._complete()
        finally:  # after an error (a cancellation, a failing report): wait without reporting
            while self._pending:
                self._pending[0].synchronize()
                self._spare.append(self._pending.popleft())

    def step_queued(self) -> None:
        """Called by the loop after queuing a step; raises Cancelled once the token is cancelled."""
        if self.device.type != "cuda":
            self._complete()
            return
        event = self._spare.pop() if self._spare else torch.cuda.Event(blocking=True)
        event.record(torch.cuda.current_stream(self.device))
        self._pending.append(event)
        while len(self._pending) > self.lookahead:
            self._pending[0].synchronize()
            self._complete()
        while self._pending and self._pending[0].query():
            self._complete()
        self.check_cancelled()

    def _complete(self) -> None:
        """The oldest queued step is done: count it, report it, and stop here if cancelled (so a
        cancelled call reports no step after the one at which it was cancelled)."""
        if self._pending:  # off CUDA nothing is pending: a step is complete once queued
            self._spare.append(self._pending.popleft())
        self.done += 1
        if self.report is not None:
            self.report(self.done, self.total)
        self.check_cancelled()


class ProgressBar:
    """`progress=True`: a tqdm bar of the completed denoising steps, as a report function."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="denoise", unit="step")

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def progress_report(progress, total: int) -> ProgressFn | None:
    """`generate(progress=...)` as a report function: True a ProgressBar (close it after), False
    None, a callable itself."""
    if progress is True:
        return ProgressBar(total)
    if progress is False or progress is None:
        return None
    if not callable(progress):
        raise ConfigError(f"progress must be True, False or a callable(steps_done, total_steps), got {progress!r}")
    return progress
