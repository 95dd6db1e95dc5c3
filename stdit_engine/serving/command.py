"""`stdit-engine serve`: the HTTP API (http.py) of a VideoService on uvicorn."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..files import check_output_target
from .defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_VIDEOS

API_KEY_VARIABLE = "STDIT_ENGINE_API_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(commands, add_model_arguments) -> None:
    parser = commands.add_parser("serve", help="an HTTP API of text-to-video jobs (README, Serving)")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE) or None,  # set but empty: none
                        help=f"require 'Authorization: Bearer KEY' on the API (default: ${API_KEY_VARIABLE}, "
                             "which keeps the key out of the process list)")
    parser.add_argument("--output-dir", type=Path, default=Path("videos"), help="where the MP4s are kept")
    parser.add_argument("--db", type=Path, help="the SQLite job store (default: OUTPUT_DIR/jobs.sqlite3)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="waiting jobs beyond which a submission gets 429")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="compatible jobs run in one guidance batch")
    parser.add_argument("--max-videos", type=int, default=DEFAULT_MAX_VIDEOS,
                        help="videos kept on disk (the oldest are deleted beyond it)")
    parser.add_argument("--max-age-hours", type=float, help="also delete videos older than this")
    parser.add_argument("--ray", action="store_true",
                        help="serve on Ray Serve, one engine per replica (needs the ray extra; README, Ray Serve)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="with --ray: engine replicas (a GPU each unless --device cpu)")


def cmd_serve(args: argparse.Namespace, build_engine) -> None:
    try:
        import uvicorn

        from .http import create_app
    except ImportError as err:
        raise ConfigError(f"serving needs the serve extra ({err.name} is missing): "
                          "pip install 'stdit-engine[serve]'") from err
    check_serve_flags(args)
    if args.host not in LOOPBACK and not args.api_key:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach it can submit jobs "
              f"(set ${API_KEY_VARIABLE} or pass --api-key)")
    if args.ray:
        try:
            from .ray_app import run
        except ImportError as err:
            raise ConfigError(f"--ray needs the ray extra ({err.name} is missing): "
                              "pip install 'stdit-engine[ray]'") from err
        return run(args)
    service = build_service(args, serving_engine(args, build_engine))
    if service.interrupted_on_open:
        print(f"{service.interrupted_on_open} job(s) left unfinished by the previous run are marked failed")
    # uvicorn handles SIGTERM and Ctrl-C: it stops accepting, lets open requests end, then the
    # app's shutdown closes the service (queued and running jobs cancelled, no partial file).
    uvicorn.run(create_app(service, api_key=args.api_key), host=args.host, port=args.port,
                timeout_graceful_shutdown=10)


def check_serve_flags(args: argparse.Namespace) -> None:
    """ConfigError for flags the service would refuse, before minutes of loading the model."""
    from .service import check_service_limits

    if args.replicas != 1 and not args.ray:
        raise ConfigError(f"--replicas {args.replicas} needs --ray: without it one engine serves every job")
    if args.replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {args.replicas}")
    if args.api_key == "":
        raise ConfigError("--api-key is empty: pass the key clients will send, or leave the flag out")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 1 to 65535, got {args.port}")
    check_service_limits(args.max_queue, args.max_batch, args.max_videos, max_age_s(args), workers=args.replicas)
    check_storage(args.output_dir, args.db)


def check_storage(output_dir: Path, db: Path | None) -> None:
    """The video folder, created now (the service would create it once the model is loaded), and
    the job store's file: each usable, or a ConfigError naming its flag."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {output_dir} is a file: pass a folder (it is created if missing)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output-dir {output_dir} cannot be created ({err.strerror or err})") from err
    if db is None and (output_dir / "jobs.sqlite3").is_dir():
        raise ConfigError(f"{output_dir / 'jobs.sqlite3'} is a folder where the job store's file goes: "
                          "remove it, or pass --db FILE")
    check_output_target(output_dir / "jobs.sqlite3" if db is None else db, "--output-dir" if db is None else "--db",
                        example_name="jobs.sqlite3")


def max_age_s(args: argparse.Namespace) -> float | None:
    return None if args.max_age_hours is None else args.max_age_hours * 3600


def serving_engine(args: argparse.Namespace, build_engine):
    """The engine of the model flags, warmed up while it loads on a GPU for every batch size a job
    batch can have: the first call of each compiles and captures, and that is not a client's wait."""
    from ..devices import resolve_device

    on_gpu = resolve_device(args.device).type == "cuda"
    return build_engine(args, warmup=range(1, args.max_batch + 1) if on_gpu else False)


def build_service(args: argparse.Namespace, engine, workers: int = 1):
    """The VideoService of the serve flags, in front of `engine`."""
    from .service import VideoService

    return VideoService(engine, max_queue=args.max_queue, max_batch=args.max_batch, output_dir=args.output_dir,
                        db_path=args.db, max_videos=args.max_videos, workers=workers,
                        max_age_s=max_age_s(args))
