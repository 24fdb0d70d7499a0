"""The web listener over real HTTP, on a real mount: token, cookie, cross-site checks,
live job events, and settings validated, applied live and saved with comments kept.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.fuse import tierutil as tu
from tests.fuse import webutil as wu
from tests.fuse.mounting import MountFactory, wait_for
from tierfs.control.client import ControlClient

tier_guard = tu.tier_guard
pytestmark = pytest.mark.timeout(120)

CSRF = {"X-Tierfs-Request": "1"}


@pytest.fixture
def web(tier_guard: Path, mount_factory: MountFactory, cold_store: Path) -> wu.WebMount:
    wu.make_store(cold_store)
    return wu.web_mount(mount_factory, tier_guard, cold_store)


def log_in(web: wu.WebMount, client: httpx.Client) -> None:
    """Log `client` in through the URL, as a browser does: it then holds the cookie."""
    answer = client.get("/", params={"token": web.token})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"


def pinned(web: wu.WebMount, model: str) -> bool:
    return bool(tu.model_of(tu.status(web.mount.state_dir), model)["pinned"])


def test_token_file_is_created_owner_only_and_kept(web: wu.WebMount) -> None:
    path = web.mount.state_dir / "web.token"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    token = web.token
    assert len(token) >= 32
    web.mount.stop()
    web.mount.start()
    assert web.token == token, "a restart must keep the token the user already has"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/status"),
        ("GET", "/static/app.js"),
        ("GET", "/metrics"),
        ("GET", "/api/events"),
        ("POST", "/api/pin"),
        ("POST", "/api/settings"),
    ],
)
def test_requests_without_the_token_get_401(web: wu.WebMount, method: str, path: str) -> None:
    body = {"model": wu.HF_MODEL} if path == "/api/pin" else {"promote_on_open": True}
    for client in (web.client(), web.client(token="x" * 43), web.client(token=web.token + "x")):
        with client:
            answer = client.request(method, path, json=body if method == "POST" else None)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"], answer.text
    assert not pinned(web, wu.HF_MODEL)
    with web.client(token=web.token) as client:
        assert client.get("/api/status").json()["mountpoint"] == str(web.mount.mountpoint)


def test_login_url_sets_a_strict_httponly_cookie_and_drops_the_token(web: wu.WebMount) -> None:
    with web.client() as client:
        wrong = client.get("/", params={"token": "not-the-token-at-all"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        answer = client.get("/", params={"token": web.token})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        # Named after the port: another daemon on this host keeps its own login.
        port = web.url.rsplit(":", 1)[1]
        assert cookie.startswith(f"tierfs_token_{port}="), cookie
        page = client.get("/")
        assert page.status_code == 200
        assert '<script src="/static/app.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        names = {m["name"] for m in client.get("/api/status").json()["models"]}
        assert wu.HF_MODEL in names


def test_cross_site_mutations_are_refused(web: wu.WebMount) -> None:
    with web.client() as client:
        log_in(web, client)
        # The cookie alone, as a cross-site form or no-cors fetch would send it.
        refused = client.post("/api/pin", json={"model": wu.HF_MODEL})
        assert refused.status_code == 403, refused.text
        assert "x-tierfs-request" in refused.json()["error"]
        for headers in (
            {**CSRF, "Origin": "http://evil.example"},
            {**CSRF, "Sec-Fetch-Site": "cross-site"},
            {**CSRF, "Sec-Fetch-Site": "same-site"},
        ):
            answer = client.post("/api/pin", json={"model": wu.HF_MODEL}, headers=headers)
            assert answer.status_code == 403, (headers, answer.text)
        assert not pinned(web, wu.HF_MODEL), "a refused request changed something"
        # Our own page's requests: same origin, with the header.
        ok = client.post(
            "/api/unpin",
            json={"model": wu.HF_MODEL},
            headers={**CSRF, "Origin": web.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert ok.status_code == 200, ok.text
    # A bearer token is never sent by a browser on its own: no header needed, but a
    # browser's cross-site marker still refuses it.
    with web.client(token=web.token) as client:
        answer = client.post(
            "/api/pin", json={"model": wu.HF_MODEL}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert answer.status_code == 403
        assert not pinned(web, wu.HF_MODEL)
        assert client.post("/api/pin", json={"model": wu.HF_MODEL}).status_code == 202
    wait_for(lambda: pinned(web, wu.HF_MODEL), what="the pin")


def test_unix_socket_needs_no_token_and_stays_owner_only(web: wu.WebMount) -> None:
    socket_path = web.mount.state_dir / "control.sock"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    with ControlClient(socket_path) as client:
        assert {m["name"] for m in client.status()["models"]} >= {wu.HF_MODEL}


def test_job_events_stream_progress_to_hot(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = wu.make_store(cold_store)
    web = wu.web_mount(mount_factory, tier_guard, cold_store)
    with web.client(token=web.token) as client, client.stream("GET", "/api/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        job = client.post("/api/promote", json={"model": wu.HF_MODEL}).json()
        seen = []
        kind = None
        for line in events.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "jobs":
                mine = [j for j in json.loads(line[6:])["jobs"] if j["id"] == job["id"]]
                seen += mine
                if mine and mine[0]["state"] not in ("queued", "running"):
                    break
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["bytes_done"] == seen[-1]["bytes_total"] > 5 * wu.MiB
    for rel in wu.HF_FILES:
        backing = Path(os.fsdecode(os.getxattr(web.mount.mountpoint / rel, "user.tierfs.backing")))
        assert backing.is_relative_to(tier_guard / "ram0"), backing
        assert tu.file_hash(backing) == hashes[rel], rel


def test_settings_are_validated_like_the_config(web: wu.WebMount) -> None:
    config = web.mount.config
    before = config.read_bytes()
    with web.client(token=web.token) as client:
        assert client.get("/api/settings").json() == {
            "strategy": "fastest-fit",
            "high_watermark": 0.95,
            "low_watermark": 0.85,
            "promote_on_open": False,
        }
        for body, needle in [
            ({"low_watermark": 0.99}, "policy: Value error, low_watermark (0.99) must not exceed"),
            ({"high_watermark": 1.5}, "policy.high_watermark"),
            ({"strategy": "fastest"}, "placement.strategy"),
            ({"promote_on_open": "yes"}, '"promote_on_open"'),
            ({"max_parallel_copies": 4}, '"max_parallel_copies"'),
        ]:
            answer = client.post("/api/settings", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert needle.split(": Value error")[0] in answer.json()["error"], answer.text
    assert config.read_bytes() == before, "a refused change touched the config file"


def test_settings_apply_live_and_save_with_comments(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    hashes = wu.make_store(cold_store)
    web = wu.web_mount(mount_factory, tier_guard, cold_store, policy="promote_on_open = false\n")
    change = {"strategy": "fill-first", "low_watermark": 0.5, "promote_on_open": True}
    with web.client() as client:
        log_in(web, client)
        answer = client.post("/api/settings", json=change, headers=CSRF)
        assert answer.status_code == 200, answer.text
        assert answer.json()["saved_to"] == str(web.mount.config)
        assert client.get("/api/settings").json() == {**change, "high_watermark": 0.95}
    text = web.mount.config.read_text()
    assert wu.CONFIG_COMMENT in text and "[policy]  # how models move" in text, text
    saved = tomllib.loads(text)
    assert saved["policy"]["low_watermark"] == 0.5
    assert saved["policy"]["promote_on_open"] is True
    assert saved["placement"]["strategy"] == "fill-first"
    assert tu.cli_ok(web.mount.config, "config", "check")
    # Live: opening a model file now promotes it, without a restart.
    rel = "hf/big/model-00001-of-00002.safetensors"
    assert tu.read_through(web.mount.mountpoint / rel) == hashes[rel]
    wait_for(
        lambda: tu.model_of(tu.status(web.mount.state_dir), wu.HF_MODEL)["state"] == "hot",
        what="the promotion on open that the live setting turned on",
    )


def test_an_address_in_use_leaves_the_mount_serving(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    wu.make_store(cold_store)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = tu.tier_toml("ram0", tier_guard / "ram0", "64M") + (
            f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
        )
        mount = mount_factory([("c", cold_store)], extra=extra)
        assert f"web GUI: cannot listen on 127.0.0.1:{port}: [Errno 98]" in mount.log_text()
        assert (mount.mountpoint / "hf/big/config.json").read_bytes().startswith(b"{")


def test_gui_command_prints_a_working_login_url(web: wu.WebMount) -> None:
    result = tu.cli_ok(web.mount.config, "gui", "--no-browser")
    url = result.stdout.strip()
    assert url == f"{web.url}/?token={web.token}"
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        answer = client.get(url)
        assert answer.status_code == 200 and "<title>tierfs</title>" in answer.text
        assert answer.url == httpx.URL(web.url + "/")


def test_the_soaks_junk_target_works_against_the_listener(web: wu.WebMount) -> None:
    from tests.soak import junk

    target = junk.HttpTarget.tcp("web", web.url, web.token, [wu.HF_MODEL])
    sent, failures = junk.http_round(target, examples=40)
    assert sent >= 40 and failures == [], failures
    with web.client(token=web.token) as client:
        assert client.get("/api/status").status_code == 200
