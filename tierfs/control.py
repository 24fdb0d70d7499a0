"""The control API: HTTP/JSON on an owner-only unix socket in the state directory.

The CLI uses it, and it is the API the web GUI is built on. Every request runs on the
daemon's own trio loop, next to the FUSE handlers, so it sees exactly the state the
mount serves.

Endpoints (JSON bodies; errors are ``{"error": ..., "errno": ...}``):

- ``GET  /api/status``: tiers, models, jobs, conflicts, problems.
- ``GET  /api/jobs`` and ``GET /api/jobs/{id}``: promotions and their progress.
- ``POST /api/promote {"model", "tier"?}``: start a promotion; returns the job.
- ``POST /api/demote {"model"}``: remove hot copies; returns the bytes freed.
- ``POST /api/pin {"model", "tier"?}`` and ``POST /api/unpin {"model"}``.
- ``POST /api/fsck {"deep"?}``: check and repair; returns the report.
- ``GET  /metrics``: Prometheus metrics.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tierfs.errors import ControlError, TierfsError

log = logging.getLogger(__name__)

_HTTP_STATUS = {
    errno.ENOENT: 404,
    errno.EINVAL: 400,
    errno.ENOSPC: 507,
    errno.EBUSY: 409,
}


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

    def metrics(self) -> dict[str, Any]: ...


Handler = Callable[[Request], Awaitable[Response]]


def _json_errors(fn: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except TierfsError as exc:
            status = _HTTP_STATUS.get(exc.errno, 400)
            return JSONResponse({"error": str(exc), "errno": exc.errno}, status_code=status)

    return wrapper


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ControlError(f"request body is not JSON: {exc}", errno=errno.EINVAL) from None
    if not isinstance(data, dict):
        raise ControlError("request body must be a JSON object", errno=errno.EINVAL)
    return data


def _model_arg(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ControlError('"model" (a model name) is required', errno=errno.EINVAL)
    return model


def _tier_arg(data: dict[str, Any]) -> str | None:
    tier = data.get("tier")
    if tier is not None and not isinstance(tier, str):
        raise ControlError('"tier" must be a tier name', errno=errno.EINVAL)
    return tier


class _Collector:
    """Exposes the daemon's counters to Prometheus at scrape time."""

    def __init__(self, service: ControlService) -> None:
        self.service = service

    def collect(self) -> Any:
        data = self.service.metrics()
        for name, (kind, help_text, samples) in data.items():
            family: Any
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=list(samples[0][0]))
            else:
                family = GaugeMetricFamily(name, help_text, labels=list(samples[0][0]))
            for labels, value in samples:
                family.add_metric(list(labels.values()), value)
            yield family


def make_app(service: ControlService) -> Starlette:
    """The ASGI app of the control API."""
    registry = CollectorRegistry()
    registry.register(_Collector(service))
    Gauge("tierfs_up", "1 while the daemon serves", registry=registry).set(1)

    @_json_errors
    async def status(request: Request) -> Response:
        return JSONResponse(await service.status())

    @_json_errors
    async def jobs(request: Request) -> Response:
        return JSONResponse({"jobs": service.jobs()})

    @_json_errors
    async def job(request: Request) -> Response:
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError:
            raise ControlError("job id must be a number", errno=errno.EINVAL) from None
        found = service.job(job_id)
        if found is None:
            raise ControlError(f"no job {job_id}", errno=errno.ENOENT)
        return JSONResponse(found)

    @_json_errors
    async def promote(request: Request) -> Response:
        data = await _body(request)
        return JSONResponse(await service.promote(_model_arg(data), _tier_arg(data)), 202)

    @_json_errors
    async def demote(request: Request) -> Response:
        data = await _body(request)
        return JSONResponse(await service.demote(_model_arg(data)))

    @_json_errors
    async def pin(request: Request) -> Response:
        data = await _body(request)
        return JSONResponse(await service.pin(_model_arg(data), _tier_arg(data)), 202)

    @_json_errors
    async def unpin(request: Request) -> Response:
        data = await _body(request)
        return JSONResponse(await service.unpin(_model_arg(data)))

    @_json_errors
    async def fsck(request: Request) -> Response:
        data = await _body(request)
        return JSONResponse(await service.fsck(bool(data.get("deep", False))))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/api/status", status),
            Route("/api/jobs", jobs),
            Route("/api/jobs/{job_id}", job),
            Route("/api/promote", promote, methods=["POST"]),
            Route("/api/demote", demote, methods=["POST"]),
            Route("/api/pin", pin, methods=["POST"]),
            Route("/api/unpin", unpin, methods=["POST"]),
            Route("/api/fsck", fsck, methods=["POST"]),
            Route("/metrics", metrics),
        ]
    )


async def serve_control(
    service: ControlService,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API on a unix socket until cancelled."""
    config = HypercornConfig()
    config.bind = [f"unix:{socket_path}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(socket_path.parent, 0o700)
    async with trio.open_nursery() as nursery:
        app: Any = make_app(service)  # an ASGI app; hypercorn's types predate starlette's
        await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        os.chmod(socket_path, 0o600)
        log.debug("control API on %s", socket_path)
        task_status.started()
