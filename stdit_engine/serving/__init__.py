"""Serving: `VideoService` (a job queue in front of one Engine) and `create_app` (its HTTP API).

Needs the `serve` extra (pip install 'stdit-engine[serve]': FastAPI, uvicorn, pydantic). Names are
imported on first use, so that the command line can list `serve` without importing them.
"""
import importlib

_EXPORTS = {"VideoService": ".service", "VideoRequest": ".schema", "Job": ".jobs", "create_app": ".http"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
