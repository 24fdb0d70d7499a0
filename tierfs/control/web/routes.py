"""The web GUI's routes on the control API's app: the page, live job events, settings.

Job progress is pushed to the page as server-sent events: the daemon's jobs, sent again
whenever they change (and a comment now and then, so proxies keep the stream open).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tierfs.control.api import ControlService, json_errors, read_body
from tierfs.control.web.settings import SettingsBody
from tierfs.errors import ControlError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The page's few small files, read once. Served from memory rather than by FileResponse,
# whose answers (hypercorn 0.18, pathsend) left a ``Connection: close`` client waiting.
ASSETS = {
    path.name: (path.read_bytes(), media)
    for path, media in (
        (STATIC / "index.html", "text/html; charset=utf-8"),
        (STATIC / "app.js", "text/javascript; charset=utf-8"),
        (STATIC / "style.css", "text/css; charset=utf-8"),
    )
}
EVENT_INTERVAL_S = 0.25
KEEPALIVE_S = 15.0
# Our page loads only our own files and talks only to us.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebService(ControlService, Protocol):
    """The control API plus what the GUI's settings need; implemented by the daemon."""

    def settings(self) -> dict[str, Any]: ...

    async def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]: ...


async def job_events(service: ControlService) -> AsyncIterator[str]:
    """The daemon's jobs as server-sent events, each time they change."""
    last = None
    quiet = 0.0
    while True:
        payload = json.dumps({"jobs": service.jobs()}, separators=(",", ":"))
        if payload != last:
            last, quiet = payload, 0.0
            yield f"event: jobs\ndata: {payload}\n\n"
        elif quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ": keepalive\n\n"
        await trio.sleep(EVENT_INTERVAL_S)
        quiet += EVENT_INTERVAL_S


def web_routes(service: WebService) -> list[BaseRoute]:
    """The GUI's routes, to add to `tierfs.control.api.make_app`."""

    async def page(request: Request) -> Response:
        body, media = ASSETS["index.html"]
        return Response(body, media_type=media, headers=PAGE_HEADERS)

    @json_errors
    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS or name == "index.html":
            raise ControlError(f"no such file: /static/{name}", errno=errno.ENOENT)
        body, media = ASSETS[name]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    async def events(request: Request) -> Response:
        return StreamingResponse(
            job_events(service),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @json_errors
    async def get_settings(request: Request) -> Response:
        return JSONResponse(service.settings())

    @json_errors
    async def post_settings(request: Request) -> Response:
        body = await read_body(request, SettingsBody)
        return JSONResponse(await service.update_settings(body.changes()))

    return [
        Route("/", page),
        Route("/api/events", events),
        Route("/api/settings", get_settings, methods=["GET"]),
        Route("/api/settings", post_settings, methods=["POST"]),
        Route("/static/{name}", asset),
    ]
