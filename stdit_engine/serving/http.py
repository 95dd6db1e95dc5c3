"""The HTTP API of a `VideoService`: `create_app(service)` -> a FastAPI (ASGI) app.

Routes (stable; the web page and the Ray Serve app build on them):

    POST   /v1/videos                {prompt, seed?, num_steps?, cfg_scale?, guidance_channels?}
                                     -> 202, the job (below); 400 not JSON; 413 body over
                                        MAX_BODY_BYTES; 422 a bad field (error.param names it); 429 queue full,
                                        with Retry-After; 503 shutting down, or the job store
                                        refused the job (with Retry-After)
    GET    /v1/videos?limit=&after=  -> {"object": "list", "data": [job, ...], "has_more"} newest first;
                                        404 `after` names no job
    GET    /v1/videos/{id}           -> the job; 404 unknown
    GET    /v1/videos/{id}/content   -> video/mp4, with Range requests (206) so a player can seek;
                                        409 not completed, 410 removed (the retention limit)
    DELETE /v1/videos/{id}           -> the job, cancelled if it was queued or running
    GET    /healthz                  -> {"status": "ok", "queue_depth": n}
    GET    /metrics                  -> Prometheus text: queue depth, jobs by state, step and request
                                        latency histograms, GPU memory
    GET    /                         -> the web page (page.py), which speaks these routes

A job (Job.to_json): {"id": "video_<32 hex>", "object": "video", "status": "queued" | "in_progress"
| "completed" | "failed" | "cancelled", "progress": 0-100, "created_at", "started_at",
"completed_at" (Unix seconds or null), "prompt", "seed" (the one used, drawn when the request had
none), "num_steps", "cfg_scale", "guidance_channels", "error": null | {"code", "message"},
"stages": the engine's stage report, "batch_size", "has_content", "expired"}.
Errors: {"error": {"type", "code", "message", "param"}} (schema.py).

With `api_key`, every route but the page, /healthz, /metrics and the API's description (/docs,
/redoc, /openapi.json) needs `Authorization: Bearer <key>` (401 otherwise), wherever the app is
mounted; /healthz and /metrics stay open for probes and scrapers, and say nothing about jobs' content.
"""
from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, JobNotReady, QueueFull, ServiceStopped, StoreUnavailable, UnknownJob
from .jobs import COMPLETED, is_job_id
from .page import add_page
from .schema import MAX_BODY_BYTES, VideoRequest, error_body, validation_error_body
from .service import VideoService

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _error(status: int, code: str, message: str, *, type: str = "invalid_request_error",
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, type=type), status_code=status, headers=headers)


class HeldFileResponse(FileResponse):
    """A FileResponse (it answers Range requests, 206 with Content-Range, itself) that calls
    `release` once sent, or once the send failed: the file is opened only as the response is sent,
    after the route has returned."""

    def __init__(self, path, *, release, **kwargs):
        super().__init__(path, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _not_json() -> JSONResponse:
    return _error(400, "invalid_json", "the request body is not valid JSON: send a JSON object (UTF-8)")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it (by its
    Content-Length, or by counting a chunked body)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, "body_too_large", f"the request body is over {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        # Read the (chunked or declared) body here, so that no more than limit + one chunk is held.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)  # the client went away
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await too_big(scope, receive, send)
            more = message.get("more_body", False)
        return await self.app(scope, _replay(chunks, receive), send)


# Served without the API key: the page (its files too), the API's description, probes and scrapers.
OPEN_PATHS = {"/", "/healthz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def _route_path(scope) -> str:
    """The path the app routes on: the request's path without the prefix the app is mounted or
    served under (`root_path`), as Starlette's router takes it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _is_open(route_path: str) -> bool:
    """Whether a path is served without the API key: none of these holds a job's data. Every other
    path needs the key, routes added later included."""
    return route_path in OPEN_PATHS or route_path.startswith("/static/")


def _replay(messages: list, then=None):
    async def receive():
        return messages.pop(0) if messages else await then()
    return receive


def create_app(service: VideoService, *, api_key: str | None = None, close_service_on_shutdown: bool = True) -> FastAPI:
    """The app serving `service`. On shutdown (uvicorn's SIGTERM handling ends here) it closes the
    service: new jobs are refused, queued and running ones cancelled, no partial file is left."""

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if close_service_on_shutdown:
            service.close()

    if api_key == "":  # would let a bare "Authorization: Bearer" through
        raise ConfigError("api_key is empty: pass the key clients will send, or None for no key")
    app = FastAPI(title="stdit-engine", summary="Open-Sora v1.0 text-to-video jobs", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    expected = None if api_key is None else api_key.encode()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if expected is not None and not _is_open(_route_path(request.scope)):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # The scheme's name is case-insensitive (RFC 9110); the key is compared in constant time.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return _error(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'",
                              type="authentication_error", headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        errors = list(exc.errors())
        no_body = any(error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",) for error in errors)
        if no_body or any(error.get("type") == "json_invalid" for error in errors):  # not a request at all
            return _not_json()
        return JSONResponse(validation_error_body(errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):  # 404 no route, 405 wrong method: one error shape
        if exc.status_code == 400:  # the only 400 FastAPI raises here: a body it could not decode
            return _not_json()
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request, exc: StoreUnavailable):
        return _error(503, "store_unavailable", str(exc), type="server_error", headers={"Retry-After": "5"})

    @app.exception_handler(UnknownJob)
    async def unknown_job(_request, exc: UnknownJob):
        return _error(404, "not_found", str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        return _error(429, "queue_full", str(exc), type="rate_limit_error",
                      headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ServiceStopped)
    async def stopped(_request, exc: ServiceStopped):
        return _error(503, "shutting_down", str(exc), type="server_error", headers={"Retry-After": "30"})

    def job_id(video_id: str) -> str:
        if not is_job_id(video_id):  # nothing else can exist; also keeps odd text out of lookups
            raise UnknownJob(f"no job {video_id!r}")
        return video_id

    @app.post("/v1/videos", status_code=202)
    def create_video(request: VideoRequest) -> dict:
        return service.submit(request).to_json()

    @app.get("/v1/videos")
    def list_videos(limit: int = Query(20, ge=1, le=100), after: str | None = None) -> dict:
        jobs = service.list(limit + 1, job_id(after) if after is not None else None)
        return {"object": "list", "data": [job.to_json() for job in jobs[:limit]], "has_more": len(jobs) > limit}

    @app.get("/v1/videos/{video_id}")
    def get_video(video_id: str) -> dict:
        return service.get(job_id(video_id)).to_json()

    @app.delete("/v1/videos/{video_id}")
    def cancel_video(video_id: str) -> dict:
        return service.cancel(job_id(video_id)).to_json()

    @app.get("/v1/videos/{video_id}/content")
    def video_content(video_id: str):
        job = service.get(job_id(video_id))
        try:
            path = service.hold_result(job.id)  # kept until the response has sent it
        except JobNotReady as err:
            gone = job.status == COMPLETED  # completed, and its file removed since
            return _error(410 if gone else 409, "expired" if gone else "not_ready", str(err))
        return HeldFileResponse(path, release=lambda: service.release_result(path), media_type="video/mp4",
                                filename=f"{job.id}.mp4")

    add_page(app)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "queue_depth": service.queue_depth()}

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.render_metrics(), media_type=PROMETHEUS_TEXT)

    return app
