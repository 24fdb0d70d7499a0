"""Serving an ASGI app (on a unix socket or TCP) with hypercorn, so that no client can end it.

Two layers of containment:

- hypercorn 0.18 (trio worker) can raise ``trio.BusyResourceError`` from a connection task
  when a client hangs up mid-request: it closes the stream (``send_eof``) in one task while
  another sends the error answer (hypercorn issue #203 looks like the same race). The
  error ends hypercorn's server nursery, and with it the daemon's root nursery. A
  connection whose answer cannot be sent has nobody left to answer, so that send is
  dropped here and the connection closes as usual.
- Anything else that escapes hypercorn is logged and the server started again, so a bug
  costs the connections open at that moment, never the mount.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)

# A server that failed starts again after this pause, so a failure that repeats at once
# cannot spin.
RESTART_DELAY_S = 0.2


class _ContainedTCPServer(TCPServer):
    """hypercorn's connection handler, minus the send race described above."""

    async def protocol_send(self, event: Event) -> None:
        try:
            await super().protocol_send(event)
        except trio.BusyResourceError:
            log.debug("control API: a client left while its answer was being sent")


# hypercorn builds its connection handlers from this module global.
hypercorn.trio.run.TCPServer = _ContainedTCPServer  # type: ignore[misc]


async def serve_unix(
    app: Any,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on an owner-only unix socket until cancelled, restarting after failures.

    Raises:
        OSError: the socket cannot be bound the first time.
    """
    await _serve(
        app,
        f"unix:{socket_path}",
        after_bind=lambda: os.chmod(socket_path, 0o600),
        task_status=task_status,
    )


async def serve_tcp(
    app: Any,
    listen: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on ``HOST:PORT`` until cancelled, restarting after failures.

    Raises:
        OSError: the address cannot be bound the first time.
    """
    await _serve(app, listen, after_bind=lambda: None, task_status=task_status)


async def _serve(
    app: Any,
    bind: str,
    *,
    after_bind: Callable[[], None],
    task_status: trio.TaskStatus[None],
) -> None:
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    started = False
    while True:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
                after_bind()
                if not started:
                    started = True
                    log.debug("serving HTTP on %s", bind)
                    task_status.started()
        except Exception:
            if not started:
                raise
            log.exception("the HTTP server on %s failed; serving again", bind)
        await trio.sleep(RESTART_DELAY_S)
