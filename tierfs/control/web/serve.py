"""The web listener: the control API's app on ``[web] listen``, behind the token gate."""

from __future__ import annotations

import logging
from typing import Any

import trio

from tierfs.control.httpserve import serve_tcp
from tierfs.control.web.auth import TokenGate

log = logging.getLogger(__name__)


async def serve_web(
    app: Any,
    listen: str,
    token: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` to token holders on `listen` (``HOST:PORT``) until cancelled.

    The mount matters more than its GUI: an address that cannot be bound is logged, and
    the daemon serves on without the web listener.
    """
    try:
        await serve_tcp(TokenGate(app, token), listen, task_status=task_status)
    except* OSError as group:
        # trio's nurseries wrap the bind's error in groups; the user wants the error.
        reason: BaseException = group
        while isinstance(reason, BaseExceptionGroup):
            reason = reason.exceptions[0]
        log.error("web GUI: cannot listen on %s: %s; serving without it", listen, reason)
        task_status.started()
