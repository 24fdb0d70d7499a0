"""The control API: HTTP/JSON on an owner-only unix socket in the state directory.

The CLI uses it, and it is the API the web GUI is built on. Every request runs on the
daemon's own trio loop, next to the FUSE handlers, so it sees exactly the state the
mount serves.

Endpoints (JSON bodies of at most 64 KiB, validated strictly: unknown keys and a string
where a boolean belongs are refused; every error, unknown paths included, is
``{"error": ..., "errno": ...}`` with a 4xx status):

- ``GET  /api/status``: tiers, models, jobs, conflicts, problems.
- ``GET  /api/jobs`` and ``GET /api/jobs/{id}``: promotions and their progress.
- ``POST /api/promote {"model", "tier"?}``: start a promotion; returns the job.
- ``POST /api/demote {"model"}``: remove hot copies; returns the bytes freed.
- ``POST /api/pin {"model", "tier"?}`` and ``POST /api/unpin {"model"}``.
- ``POST /api/fsck {"deep"?}``: check and repair; returns the report.
- ``GET  /api/pools``: every pool's kind, size, use and state.
- ``POST /api/pools/{name}/connect|disconnect``, ``POST /api/pools/{name}/resize {"size"}``:
  start an operation; returns ``{"operation"}`` with its steps (202).
- ``GET  /api/pools/operations/{id}``: an operation and its steps' progress.
- ``GET  /metrics``: Prometheus metrics.

The daemon adds the web GUI's routes to the same app (`tierfs.control.web.routes`: the
page, ``GET /api/events`` and ``GET|POST /api/settings``) and serves it on the socket
and, behind a token, on ``[web] listen`` (`tierfs.control.web`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import trio
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tierfs.control.httpserve import serve_unix
from tierfs.control.metrics import MetricsSnapshot
from tierfs.errors import ControlError, TierfsError
from tierfs.units import parse_size

log = logging.getLogger(__name__)

_HTTP_STATUS = {
    errno.ENOENT: 404,
    errno.EINVAL: 400,
    errno.ENOSPC: 507,
    errno.EBUSY: 409,
    errno.EFBIG: 413,
}
# Requests are small JSON objects; anything bigger is refused before it is parsed.
MAX_BODY = 64 << 10
MAX_NAME = 1024
# Error messages quote what the client sent; they quote at most this much of it.
MAX_MESSAGE = 400


class ControlService(Protocol):
    """What the control API can do; implemented by the daemon."""

    async def status(self) -> dict[str, Any]: ...

    def jobs(self) -> list[dict[str, Any]]: ...

    def job(self, job_id: int) -> dict[str, Any] | None: ...

    async def promote(self, model: str, tier: str | None) -> dict[str, Any]: ...

    async def demote(self, model: str) -> dict[str, Any]: ...

    async def pin(self, model: str, tier: str | None) -> dict[str, Any]: ...

    async def unpin(self, model: str) -> dict[str, Any]: ...

    async def fsck(self, deep: bool) -> dict[str, Any]: ...

    async def pools(self) -> list[dict[str, Any]]: ...

    async def pool_action(self, name: str, action: str, size: int | None) -> dict[str, Any]: ...

    def pool_operation(self, op_id: int) -> dict[str, Any] | None: ...

    async def metrics(self) -> dict[str, Any]: ...


class StrictBody(BaseModel):
    """A request body: unknown keys and loosely typed values are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelBody(StrictBody):
    """``{"model"}``: demote, unpin."""

    model: str = Field(min_length=1, max_length=MAX_NAME)


class PlacementBody(ModelBody):
    """``{"model", "tier"?}``: promote, pin."""

    tier: str | None = Field(default=None, min_length=1, max_length=MAX_NAME)


class FsckBody(StrictBody):
    """``{"deep"?}``: a JSON boolean, never a string that looks like one."""

    deep: bool = False


class ResizeBody(StrictBody):
    """``{"size"}``: a size like ``"8G"`` (binary units, as in the config) or bytes."""

    size: str | int

    def parsed(self) -> int:
        try:
            return parse_size(self.size)
        except ValueError as exc:
            raise ControlError(f'"size": {exc}', errno=errno.EINVAL) from None


Handler = Callable[[Request], Awaitable[Response]]
B = TypeVar("B", bound=StrictBody)


def _error(message: str, code: int, status: int) -> JSONResponse:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 20] + f"... ({len(message)} chars)"
    return JSONResponse({"error": message, "errno": code}, status_code=status)


def json_errors(fn: Handler) -> Handler:
    """Wrap a handler so that every failure is answered as ``{"error", "errno"}`` JSON."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except TierfsError as exc:
            return _error(str(exc), exc.errno, _HTTP_STATUS.get(exc.errno, 400))
        except ClientDisconnect:
            # Gone before its request was whole: nothing was done, no one to answer.
            return Response(status_code=400)
        except Exception:
            # A bug must cost one request, never the daemon; the answer stays JSON.
            log.exception("control API: %s %s failed", request.method, request.url.path)
            return _error("internal error; see the daemon's log", errno.EIO, 500)

    return wrapper


async def read_body(request: Request, model: type[B]) -> B:
    """The request's JSON body, at most `MAX_BODY` bytes, validated as `model`.

    Raises:
        ControlError: too big (EFBIG), not a JSON object, or not valid (EINVAL).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise ControlError(f"request body exceeds {MAX_BODY} bytes", errno=errno.EFBIG)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ControlError(f"request body exceeds {MAX_BODY} bytes", errno=errno.EFBIG)
    try:
        data = json.loads(raw) if raw else {}
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ControlError(f"request body is not JSON: {reason}", errno=errno.EINVAL) from None
    if not isinstance(data, dict):
        raise ControlError("request body must be a JSON object", errno=errno.EINVAL)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = str(first["loc"][0]) if first["loc"] else "body"
        raise ControlError(f'"{where}": {first["msg"]}', errno=errno.EINVAL) from None


def make_app(service: ControlService, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app of the control API.

    Args:
        service: the daemon's side of the API.
        extra_routes: more routes on the same app (the web GUI's).
    """

    @json_errors
    async def status(request: Request) -> Response:
        return JSONResponse(await service.status())

    @json_errors
    async def jobs(request: Request) -> Response:
        return JSONResponse({"jobs": service.jobs()})

    @json_errors
    async def job(request: Request) -> Response:
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError:
            raise ControlError("job id must be a number", errno=errno.EINVAL) from None
        found = service.job(job_id)
        if found is None:
            raise ControlError(f"no job {job_id}", errno=errno.ENOENT)
        return JSONResponse(found)

    @json_errors
    async def promote(request: Request) -> Response:
        body = await read_body(request, PlacementBody)
        return JSONResponse(await service.promote(body.model, body.tier), 202)

    @json_errors
    async def demote(request: Request) -> Response:
        body = await read_body(request, ModelBody)
        return JSONResponse(await service.demote(body.model))

    @json_errors
    async def pin(request: Request) -> Response:
        body = await read_body(request, PlacementBody)
        return JSONResponse(await service.pin(body.model, body.tier), 202)

    @json_errors
    async def unpin(request: Request) -> Response:
        body = await read_body(request, ModelBody)
        return JSONResponse(await service.unpin(body.model))

    @json_errors
    async def fsck(request: Request) -> Response:
        body = await read_body(request, FsckBody)
        return JSONResponse(await service.fsck(body.deep))

    @json_errors
    async def pools(request: Request) -> Response:
        return JSONResponse({"pools": await service.pools()})

    @json_errors
    async def pool_action(request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("connect", "disconnect", "resize"):
            raise ControlError(f"no pool action {action!r}", errno=errno.ENOENT)
        size = (await read_body(request, ResizeBody)).parsed() if action == "resize" else None
        operation = await service.pool_action(name, action, size)
        return JSONResponse({"operation": operation}, 202)

    @json_errors
    async def pool_operation(request: Request) -> Response:
        raw = request.path_params["op_id"]
        if not raw.isdigit():
            raise ControlError("operation id must be a number", errno=errno.EINVAL)
        found = service.pool_operation(int(raw))
        if found is None:
            raise ControlError(f"no pool operation {raw}", errno=errno.ENOENT)
        return JSONResponse({"operation": found})

    @json_errors
    async def metrics(request: Request) -> Response:
        registry = CollectorRegistry()
        registry.register(MetricsSnapshot(await service.metrics()))
        Gauge("tierfs_up", "1 while the daemon serves", registry=registry).set(1)
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and methods get JSON too, like every other error.
        assert isinstance(exc, HTTPException)
        return _error(str(exc.detail), errno.EINVAL, exc.status_code)

    return Starlette(
        exception_handlers={HTTPException: http_error},
        routes=[
            Route("/api/status", status),
            Route("/api/jobs", jobs),
            Route("/api/jobs/{job_id}", job),
            Route("/api/promote", promote, methods=["POST"]),
            Route("/api/demote", demote, methods=["POST"]),
            Route("/api/pin", pin, methods=["POST"]),
            Route("/api/unpin", unpin, methods=["POST"]),
            Route("/api/fsck", fsck, methods=["POST"]),
            Route("/api/pools", pools),
            Route("/api/pools/operations/{op_id}", pool_operation),
            Route("/api/pools/{name}/{action}", pool_action, methods=["POST"]),
            Route("/metrics", metrics),
            *extra_routes,
        ],
    )


async def serve_control(
    app: Starlette,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API's `app` on an owner-only unix socket until cancelled.

    No request, however broken, may end the daemon: see `tierfs.control.httpserve`.
    """
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(socket_path.parent, 0o700)
    # An ASGI app; hypercorn's types predate starlette's.
    await serve_unix(cast(Any, app), socket_path, task_status=task_status)
