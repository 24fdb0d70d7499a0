"""Garbage input for the soak, driven by hypothesis.

- **HTTP targets**: random methods, paths, headers and bodies sent to an HTTP API. The
  control API (its unix socket) is one target; the web API, once the daemon has one, is
  added as another `HttpTarget` with its base URL and token (``--web URL``). Every answer
  must come within the timeout, be below 500, and a 4xx must carry a JSON ``error``.
- **Config files**: a valid config, mutated line by line (keys dropped or duplicated,
  values swapped for junk, garbage lines, truncation), or raw junk text, checked with
  ``tierfs config check``. It must exit 0 or 2, with a single ``tierfs: `` line for 2, and
  never a traceback or a hang.

Each round returns how many inputs it sent and a list of failures (one line each).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
API_PATHS = [
    "/api/status",
    "/api/jobs",
    "/api/jobs/1",
    "/api/promote",
    "/api/demote",
    "/api/pin",
    "/api/unpin",
    "/metrics",
]
# fsck is left out: a deep check re-hashes every hot copy, and the soak runs its own.
JUNK_VALUES = ['"x"', "-1", "1e999", "[1, 2]", "{a = 1}", "true", '"200Q"', '""', "nan", "0"]


NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


@dataclass
class HttpTarget:
    """An HTTP API to throw junk at.

    Every request gets a fresh connection: one left idle, even between two examples on a
    loaded machine, can be closed by the server (keep-alive timeout) just as a request goes
    out on it, which says nothing about how junk is handled. On a fresh connection, a reset
    is the server's doing.
    """

    name: str
    connect: Callable[[], httpx.Client]
    models: list[str] = field(default_factory=list)

    @classmethod
    def unix(cls, name: str, socket: Path, models: list[str]) -> HttpTarget:
        def connect() -> httpx.Client:
            transport = httpx.HTTPTransport(uds=str(socket), limits=NO_KEEPALIVE)
            return httpx.Client(transport=transport, base_url="http://tierfs", timeout=20)

        return cls(name, connect, models)

    @classmethod
    def tcp(cls, name: str, base_url: str, token: str | None, models: list[str]) -> HttpTarget:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(
            name,
            lambda: httpx.Client(
                base_url=base_url, headers=headers, timeout=20, limits=NO_KEEPALIVE
            ),
            models,
        )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    )


def _bodies(models: list[str]) -> st.SearchStrategy[bytes]:
    names = st.sampled_from(models) if models else st.text(max_size=20)
    fields = st.fixed_dictionaries(
        {},
        optional={
            "model": names | _json_values(),
            "tier": st.sampled_from(["ram0", "ram1", "nope"]) | _json_values(),
            "deep": _json_values(),
        },
    )
    return (
        fields.map(lambda d: json.dumps(d).encode())
        | _json_values().map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=200)
    )


def http_round(target: HttpTarget, examples: int) -> tuple[int, list[str]]:
    """Send `examples` junk requests to `target`."""
    sent = 0
    failures: list[str] = []
    paths = st.sampled_from(API_PATHS) | st.text(max_size=30).map(lambda s: "/api/" + s)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path=paths,
        body=_bodies(target.models),
        content_type=st.sampled_from(["application/json", "text/plain", "", "x/\u00ff"]),
    )
    def probe(method: str, path: str, body: bytes, content_type: str) -> None:
        nonlocal sent
        sent += 1
        what = f"{target.name}: {method} {path!r} {body[:60]!r}"
        try:
            response = client.request(
                method, path, content=body, headers={"content-type": content_type}
            )
        except httpx.TimeoutException:
            failures.append(f"{what}: no answer within the timeout (a hang)")
            return
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError):
            return  # the client refused to send it; nothing reached the daemon
        except UnicodeError:
            return  # likewise, for a path or header the client cannot encode
        # Any other transport error (refused, reset, cut short) goes to the caller, which
        # knows whether the daemon was down at the time.
        if response.status_code >= 500:
            failures.append(f"{what}: HTTP {response.status_code} {response.text[:200]!r}")
        elif response.status_code >= 400 and path.startswith("/api/"):
            try:
                ok = "error" in response.json()
            except ValueError:
                ok = response.status_code in (404, 405)  # starlette's own plain answers
            if not ok:
                failures.append(f"{what}: HTTP {response.status_code} without a JSON error")

    with target.connect() as client:
        probe()
    return sent, failures


def _mutations(valid: str) -> st.SearchStrategy[str]:
    lines = valid.splitlines()

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(out) - 1))
            op = draw(st.sampled_from(["drop", "dup", "value", "garbage", "truncate", "key"]))
            if op == "drop":
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "value" and "=" in out[i]:
                key = out[i].split("=", 1)[0]
                value = draw(st.sampled_from(JUNK_VALUES) | st.text(max_size=12))
                out[i] = f"{key}= {value}"
            elif op == "garbage":
                out.insert(i, draw(st.text(max_size=30)))
            elif op == "truncate":
                out = [*out[:i], out[i][: draw(st.integers(0, len(out[i])))]]
            elif op == "key":
                out.insert(i, f"{draw(st.text(min_size=1, max_size=10))} = 1")
            if not out:
                out = [""]
        return "\n".join(out) + "\n"

    return mutate()


def config_round(valid_config: str, examples: int) -> tuple[int, list[str]]:
    """Check `examples` junk configs with ``tierfs config check``."""
    sent = 0
    failures: list[str] = []
    text = _mutations(valid_config) | st.text(max_size=200) | st.binary(max_size=200)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(content=text)
    def probe(content: str | bytes) -> None:
        nonlocal sent
        sent += 1
        raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
        with tempfile.NamedTemporaryFile(suffix=".toml") as f:
            f.write(raw)
            f.flush()
            failure = check_config_file(Path(f.name))
        if failure:
            failures.append(f"config {raw[:80]!r}: {failure}")

    probe()
    return sent, failures


def check_config_file(path: Path) -> str | None:
    """Run ``tierfs config check`` on a file; what is wrong with how it answered, if anything."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tierfs", "config", "check", "-c", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "tierfs config check hangs"
    err = result.stderr.strip()
    if "Traceback" in err:
        return f"a traceback: {err[-300:]}"
    if result.returncode == 0:
        return None
    if result.returncode != 2:
        return f"exit {result.returncode}, not 0 or 2: {err[-200:]}"
    if len(err.splitlines()) != 1 or not err.startswith("tierfs: "):
        return f"not one 'tierfs: ' line: {err[-300:]!r}"
    return None
