"""Stopping a running `generate()` from another thread."""
from __future__ import annotations

import threading

from ..errors import Cancelled, ConfigError


class CancelToken:
    """Pass one to `generate(..., cancel=token)`; `token.cancel()`, from any thread, makes that call
    raise `Cancelled` at its next check: before each stage, while it waits for a stage that another
    call holds, and after each denoising step (engine/progress.py says how soon the device stops).
    A token stays cancelled: use a new one for the next call."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("the call was cancelled through its CancelToken; the engine is ready for the next call")


def raise_if_cancelled(token: CancelToken | None) -> None:
    if token is not None:
        token.raise_if_cancelled()


def check_cancel_token(cancel) -> CancelToken | None:
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise ConfigError(f"cancel must be a stdit_engine.CancelToken or None, got {type(cancel).__name__} {cancel!r}")
    return cancel
