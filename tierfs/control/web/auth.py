"""Who may use the web listener: holders of the token, and only from our own page.

The token lives in a file (``[web] token_file``, by default ``<state_dir>/web.token``),
created with mode 0600 at first start. A request carries it as ``Authorization: Bearer``
or as the cookie set by visiting ``/?token=...``.

Cross-site requests: the cookie is ``SameSite=Strict``, so another site's page cannot make
the browser send it. As a second layer, a mutating request is refused when the browser
says it comes from another site (``Sec-Fetch-Site``, ``Origin``), and one authenticated by
the cookie must also carry the `CSRF_HEADER`, which a cross-site form cannot set and a
cross-site script cannot send without a CORS preflight that is never granted. A bearer
token is never sent by a browser on its own, so bearer requests need no such header.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

from tierfs.errors import ControlError

log = logging.getLogger(__name__)

COOKIE_PREFIX = "tierfs_token_"
CSRF_HEADER = "x-tierfs-request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def load_or_create_token(path: Path) -> str:
    """The web token in `path`, created (0600, never replaced) when the file is missing.

    Raises:
        ControlError: the file cannot be read or created, is empty, or others may read it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_token(path)
    except OSError as exc:
        raise ControlError(
            f"cannot create the web token file {path}: {exc.strerror}",
            path=str(path),
            errno=exc.errno or errno.EIO,
        ) from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created the web token in %s", path)
    return token


def read_token(path: Path) -> str:
    """The token in `path`, checked (owner-only, long enough).

    Raises:
        ControlError: unreadable, readable by others, or too short.
    """
    try:
        st = os.stat(path)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ControlError(
            f"cannot read the web token file {path}: {reason}", path=str(path), errno=errno.EIO
        ) from None
    if st.st_mode & 0o077:
        raise ControlError(
            f"the web token file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
            "chmod 600 it",
            path=str(path),
            errno=errno.EACCES,
        )
    if len(text) < 16:
        raise ControlError(
            f"the web token file {path} holds no token of at least 16 characters",
            path=str(path),
            errno=errno.EINVAL,
        )
    return text


def cookie_name(request: Request) -> str:
    """The login cookie of this listener: cookies ignore ports, so two daemons on one host
    (on two ports) would otherwise log each other out."""
    server = request.scope.get("server")
    return f"{COOKIE_PREFIX}{server[1] if server else 0}"


def _refuse(status: int, message: str) -> JSONResponse:
    code = errno.EACCES if status == 401 else errno.EPERM
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, "errno": code}, status_code=status, headers=headers)


class TokenGate:
    """ASGI middleware in front of the app on the web listener (see the module docstring).

    Args:
        app: the control API's app, the same one the unix socket serves.
        token: the token every request must carry.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and secrets.compare_digest(
            candidate.encode(errors="replace"), self._token
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._check(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, request: Request) -> Any:
        """None to let the request through, else the answer that refuses or redirects it."""
        offered = request.query_params.get("token")
        if request.url.path == "/" and offered is not None:
            if not self._matches(offered):
                return _refuse(401, "wrong token in the login URL; see `tierfs gui`")
            # The token leaves the URL (and so history and Referer) at once.
            answer = RedirectResponse("/", status_code=303)
            answer.set_cookie(
                cookie_name(request), offered, httponly=True, samesite="strict", path="/"
            )
            return answer
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        by_bearer = scheme.lower() == "bearer" and self._matches(bearer.strip())
        by_cookie = not by_bearer and self._matches(request.cookies.get(cookie_name(request)))
        if not (by_bearer or by_cookie):
            return _refuse(401, "a token is needed: open the URL that `tierfs gui` prints")
        if request.method in SAFE_METHODS:
            return None
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return _refuse(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return _refuse(403, "cross-site request refused (Origin is not this server)")
        if by_cookie and CSRF_HEADER not in request.headers:
            return _refuse(403, f"a request authenticated by cookie needs the {CSRF_HEADER} header")
        return None
