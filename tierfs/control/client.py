"""A client of the control API, over the daemon's unix socket.

Plain ``http.client``: the CLI starts for every command, and an HTTP library's import
alone cost a third of ``tierfs status``.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tierfs.errors import ControlError


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("tierfs", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def daemon_running(socket_path: Path) -> bool:
    """Whether a daemon listens on the control socket (a stale socket file is not one)."""
    if not socket_path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(socket_path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class ControlClient:
    """Calls the control API of the daemon whose socket is `socket_path`.

    Raises:
        ControlError: the daemon cannot be reached, or refused the request (its message
            is kept).
    """

    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to release: each call has its own connection."""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # One connection per call: nothing to go stale between the polls of a long wait.
        connection = _UnixConnection(self.socket_path, self.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(
                f"cannot reach the tierfs daemon at {self.socket_path}: {exc}",
                path=str(self.socket_path),
                errno=errno.ECONNREFUSED,
            ) from None
        finally:
            connection.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"error": raw.decode(errors="replace")}
        if response.status >= 400:
            raise ControlError(
                str(data.get("error", response.reason)),
                errno=int(data.get("errno", errno.EIO)),
            )
        return data

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/status"))

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/jobs/{job_id}"))

    def promote(self, model: str, tier: str | None) -> dict[str, Any]:
        return dict(self._call("POST", "/api/promote", {"model": model, "tier": tier}))

    def demote(self, model: str) -> dict[str, Any]:
        return dict(self._call("POST", "/api/demote", {"model": model}))

    def pin(self, model: str, tier: str | None) -> dict[str, Any]:
        return dict(self._call("POST", "/api/pin", {"model": model, "tier": tier}))

    def unpin(self, model: str) -> dict[str, Any]:
        return dict(self._call("POST", "/api/unpin", {"model": model}))

    def fsck(self, deep: bool) -> dict[str, Any]:
        return dict(self._call("POST", "/api/fsck", {"deep": deep}))

    def pools(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/pools")["pools"])

    def pool_action(self, name: str, action: str, size: str | None = None) -> dict[str, Any]:
        body = {"size": size} if size is not None else None
        path = f"/api/pools/{quote(name, safe='')}/{action}"
        return dict(self._call("POST", path, body)["operation"])

    def pool_operation(self, op_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/pools/operations/{op_id}")["operation"])
