"""The web page at `/`: static HTML, JS and CSS (serving/static/), no build step.

The page needs no key to load (it holds no data); it asks for the API key and sends it with every
/v1 request itself, so auth stays where it is, on the API routes.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

# Scripts and styles from this origin only (no inline code, so injected markup cannot run); the
# video plays from the blob: URL the page makes of the content it fetched with the key.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_page(app: FastAPI) -> None:
    """Serves the page at `/` and its files under `/static/`."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)
