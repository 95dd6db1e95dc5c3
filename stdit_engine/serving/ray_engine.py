"""An engine on Ray Serve replicas: `EngineReplica` (one Engine per replica) and `RemoteEngine`
(what a VideoService calls in place of an Engine, to run each batch on some replica).

`RemoteEngine.generate` takes the arguments of `Engine.generate` and returns what it returns: the
call is streamed to one replica (Serve's router picks one with no batch running, and queues the
call while none is free), which yields the engine's progress as it goes and then the videos and
the stage report; the frames come back through Ray's object store. Cancelling the call's
`CancelToken` cancels the Serve request: the replica cancels its engine call in turn and waits for
it to stop before it takes another batch, so a replica never runs two batches at once.
Errors come back typed: the engine's own exception (a SamplingError stays one), `Cancelled` for a
cancelled call, `ReplicaFailed` when the replica died or could not be reached.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import RequestCancelledError

from ..engine.cancel import CancelToken
from ..engine.memory import StageStats
from ..errors import Cancelled, ReplicaFailed

# How often a waiting RemoteEngine call looks at its CancelToken: the bound on how late a
# cancellation reaches a call that is queued for a replica or in a stage without progress events.
CANCEL_POLL_S = 0.1


@dataclass
class ReplicaStageStats(StageStats):
    """A stage of the engine report, with the replica that ran it (Serve's replica id)."""

    replica: str = ""


class Progress(NamedTuple):
    step: int
    total: int


class Finished(NamedTuple):
    videos: list
    stages: list[ReplicaStageStats]


@serve.deployment(max_ongoing_requests=1)  # one batch at a time: the engine owns its device
class EngineReplica:
    """One Engine, made by `make_engine()` when the replica starts (on a GPU replica, Ray's
    CUDA_VISIBLE_DEVICES makes "cuda" the replica's own GPU)."""

    def __init__(self, make_engine: Callable[[], object]):
        self.engine = make_engine()
        self.name = serve.get_replica_context().replica_id.unique_id

    async def generate(self, prompts: list[str], options: dict):
        """Streams Progress(step, total) events, then one Finished. `options`: the keyword arguments
        of Engine.generate other than progress, cancel and stats, which belong to this call."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        token, stats = CancelToken(), []

        def progress(step: int, total: int) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(events.put_nowait, Progress(step, total))

        run = loop.run_in_executor(None, functools.partial(
            self.engine.generate, prompts, progress=progress, cancel=token, stats=stats, **options))
        # The run's result is handed to the loop after every progress event the thread scheduled,
        # so this end marker comes last.
        run.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            videos = await run  # the engine's exception, if any, goes back to the caller as it is
        finally:
            if not run.done():  # the caller cancelled the request (or went away)
                token.cancel()
                await asyncio.wait([run])  # stopped within the engine's bound, before the next batch
        yield Finished(videos, [ReplicaStageStats(**asdict(stage), replica=self.name) for stage in stats])


class RemoteEngine:
    """Runs `generate` on the replicas behind `replicas` (a handle to EngineReplica).

    `device` is where the caller's tensors live (the CPU): the models are on the replicas.
    """

    device = torch.device("cpu")

    def __init__(self, replicas):
        self._replicas = replicas.options(stream=True)

    def generate(self, prompts, *, progress=None, cancel: CancelToken | None = None,
                 stats: list | None = None, **options):
        call = self._replicas.generate.remote(list(prompts), options)
        finished = threading.Event()
        if cancel is not None:
            threading.Thread(target=_cancel_when_asked, args=(call, cancel, finished), daemon=True).start()
        result = None
        try:
            for event in call:
                if isinstance(event, Finished):
                    result = event
                elif callable(progress):
                    progress(event.step, event.total)
        except RequestCancelledError:
            raise Cancelled("the call was cancelled") from None
        except RayTaskError as err:  # the replica raised: its own exception, with its message
            raise (err.cause if isinstance(err.cause, BaseException) else err) from None
        except RayActorError as err:
            raise ReplicaFailed(f"the replica running this batch stopped ({type(err).__name__}); "
                                "submit the job again") from err
        finally:
            finished.set()
        if stats is not None:
            stats.extend(result.stages)
        return result.videos


def _cancel_when_asked(call, token: CancelToken, finished: threading.Event) -> None:
    while not finished.wait(CANCEL_POLL_S):
        if token.cancelled:
            call.cancel()
            return
