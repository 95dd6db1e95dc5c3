"""`BackgroundServer`: uvicorn serving an app from a thread of this process, on a free port.

For notebooks, tests and benchmarks that want the real HTTP stack beside their own code;
`stdit-engine serve` runs uvicorn in the foreground instead (with its signal handling).
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn


class BackgroundServer:
    """Starts serving `app` on host:port (port 0: a free one, then in `.port`); `.stop()` shuts it
    down as SIGTERM would (the app's shutdown runs). Usable as a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        # Outside the main thread uvicorn installs no signal handlers: stop() is the way to end it.
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="stdit-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop(timeout=5)
                raise RuntimeError(f"the HTTP server on {host}:{self.port} did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float | None = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the HTTP server on {self.url} did not stop within {timeout} s")

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
