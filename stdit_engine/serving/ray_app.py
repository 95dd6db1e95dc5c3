"""The video service on Ray Serve: the same HTTP API, web page and job semantics as
`stdit-engine serve`, with one engine per replica.

    stdit-engine serve --ray --replicas 4 --preset 16x256x256        # starts Ray here, or joins $RAY_ADDRESS
    serve run stdit_engine.serving.ray_app:build_app preset=16x256x256 replicas=4   # Ray's own CLI
    serve deploy examples/ray_serve.yaml                             # a cluster, with autoscaling

Two deployments:

- `EngineReplica` (ray_engine.py), `replicas` of them: one Engine each (`num_gpus=1` unless
  `--device cpu`), one batch at a time. They hold no job state, so Serve may route to, restart or
  autoscale them freely.
- `VideoGateway`, one replica: `create_app(VideoService(RemoteEngine(...)))`, i.e. the queue, the
  batching, the SQLite job store, the retention and the HTTP routes of `stdit-engine serve`, run
  unchanged, with each batch sent to an EngineReplica through Serve's request routing. Its service
  runs `replicas` batches at once; Serve's router sends each to a free replica and queues the rest,
  which is the load the autoscaler scales on.

Where job state lives, and why there. Every HTTP request reaches the one gateway (Serve's HTTP
proxy on any node forwards to it), and every job's record is in its VideoService, so a status
request sees the job whichever replica generates it, and no second copy of the job semantics
exists: a named actor holding a job table would re-implement the queue, cancellation and
retention of VideoService beside it, and SQLite on a shared network path is unsafe (its locking
and WAL need a local disk). The gateway does no model work, so one carries the requests of many
GPU replicas. If it restarts, its SQLite store (`--db`) marks the jobs it had queued or running as
failed, as `stdit-engine serve` does after a restart: keep `--output-dir` and `--db` on a disk
that outlives the gateway's node for finished jobs to survive that too.

Where videos go. An engine replica returns the frames through Ray's object store; the gateway
writes the MP4 into its output folder (atomically, under server-made names, with retention) and
serves it from there with Range support. No video stays on an engine replica's disk, so it makes
no difference which replica made it.
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from ray import serve

from .command import build_service, check_serve_flags, serving_engine
from .http import create_app
from .ray_engine import EngineReplica, RemoteEngine

APP_NAME = "stdit-engine"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})  # the job table: exactly one
@serve.ingress()
class VideoGateway:
    def __init__(self, replicas, args: argparse.Namespace):
        self.api_key = args.api_key
        self.service = build_service(args, RemoteEngine(replicas), workers=args.replicas)

    def __serve_build_asgi_app__(self):
        return create_app(self.service, api_key=self.api_key)


def application(args: argparse.Namespace, make_engine=None):
    """The Serve application of `stdit-engine serve --ray`'s flags. `make_engine`: builds each
    replica's engine (default: the engine the model flags describe)."""
    from ..cli import build_engine

    check_serve_flags(args)
    args = argparse.Namespace(**vars(args))
    args.output_dir = Path(args.output_dir).resolve()  # replicas do not share the caller's working dir
    args.db = None if args.db is None else Path(args.db).resolve()
    on_cpu = args.device is not None and args.device.startswith("cpu")
    engines = EngineReplica.options(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": 1} if on_cpu else {"num_cpus": 1, "num_gpus": 1})
    make_engine = make_engine or functools.partial(serving_engine, args, build_engine)
    return VideoGateway.bind(engines.bind(make_engine), args)


def build_app(options: dict):
    """Serve's application builder: `serve run stdit_engine.serving.ray_app:build_app preset=tiny
    random_weights=true device=cpu replicas=2`, or a config file's `args:`. The keys are the flags of
    `stdit-engine serve` with `_` for `-`; true / false for the switches."""
    from ..cli import _parser

    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True or str(value).lower() == "true":
            argv.append(flag)
        elif not (value is False or str(value).lower() == "false"):
            argv += [flag, str(value)]
    return application(_parser().parse_args(["serve", "--ray", *argv]))


def run(args: argparse.Namespace) -> None:
    """`stdit-engine serve --ray`: deploys the app on the Ray cluster at $RAY_ADDRESS, or on one
    started here, with Serve's HTTP proxy on --host:--port; Ctrl-C deletes the app (and stops the
    Ray instance it started). SIGTERM is Ray's to handle: its handler ends the process at once."""
    import ray

    ray.init()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(args), name=APP_NAME, route_prefix="/")
    print(f"serving on http://{args.host}:{args.port}/ with {args.replicas} engine replica(s); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        ray.shutdown()
