"""The control API against broken, hostile and random clients: every answer is JSON, no
answer is a 500, and the daemon (and so the mount) outlives them all."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuse import controlprobe as cp
from tests.fuse.crashutil import (
    HF_MODEL,
    TierDirs,
    build_hf_model,
    manual_tier_toml,
    mounted_bytes,
    xxh,
)
from tests.fuse.mounting import Mount, MountFactory
from tierfs.states import JobState
from tierfs.storage.mover.jobs import JOB_HISTORY

pytestmark = [pytest.mark.timeout(300)]

ENDPOINTS = [
    ("GET", "/api/status"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/1"),
    ("POST", "/api/promote"),
    ("POST", "/api/demote"),
    ("POST", "/api/pin"),
    ("POST", "/api/unpin"),
    ("POST", "/api/fsck"),
    ("GET", "/metrics"),
]


@pytest.fixture
def rig(
    tmp_path: Path, mount_factory: MountFactory, cold_store: Path
) -> Iterator[tuple[Mount, dict[str, str]]]:
    dirs = TierDirs(tmp_path)
    hashes = build_hf_model(cold_store)
    yield mount_factory([("cold", cold_store)], extra=manual_tier_toml(dirs.new())), hashes
    dirs.cleanup()


def _assert_serving(mount: Mount, cold: Path, hashes: dict[str, str]) -> None:
    assert mount.process is not None and mount.process.poll() is None, "the daemon died"
    for relpath, digest in hashes.items():
        assert xxh(mounted_bytes(mount.mountpoint, relpath)) == digest
    answer = cp.exchange(
        mount.state_dir / "control.sock", cp.request_bytes("GET", "/api/status", b"")
    )
    assert answer.status == 200
    assert cp.json_of(answer)["running"] is True


def test_clients_that_hang_up_or_send_garbage_never_end_the_daemon(
    rig: tuple[Mount, dict[str, str]], cold_store: Path
) -> None:
    mount, hashes = rig
    sock = mount.state_dir / "control.sock"
    rng = random.Random(9)
    promote = json.dumps({"model": HF_MODEL}).encode()
    for _ in range(25):
        # A body cut short, a lying Content-Length, garbage, a slow trickle, and a full
        # request whose large answer nobody reads.
        cp.hang_up(sock, cp.request_bytes("POST", "/api/fsck", b'{"deep": fal', length=4000))
        cp.hang_up(sock, cp.request_bytes("POST", "/api/promote", promote, length=len(promote) + 9))
        cp.hang_up(sock, rng.randbytes(rng.randrange(1, 3000)))
        cp.hang_up(sock, cp.request_bytes("GET", "/api/status", b"")[:25], pause=0.001)
        cp.hang_up(sock, cp.request_bytes("GET", "/api/status", b"") * 3)
    _assert_serving(mount, cold_store, hashes)


def test_hostile_requests_get_json_4xx_and_do_nothing(
    rig: tuple[Mount, dict[str, str]], cold_store: Path
) -> None:
    mount, hashes = rig
    sock = mount.state_dir / "control.sock"

    def post(path: str, body: bytes) -> tuple[int, dict[str, object]]:
        answer = cp.exchange(sock, cp.request_bytes("POST", path, body))
        return answer.status, cp.json_of(answer)

    # A body too large is refused on its Content-Length, before a byte of it is read.
    answer = cp.exchange(sock, cp.request_bytes("POST", "/api/promote", b"", length=10 << 20))
    assert answer.status == 413 and len(answer.body) < 1000, answer
    assert "exceeds" in str(cp.json_of(answer)["error"])
    # Sent anyway, it is cut off: the connection drops, or a short 413 comes back.
    for body in (json.dumps({"model": "x" * (10 << 20)}).encode(), b"[" * (1 << 20)):
        try:
            answer = cp.exchange(sock, cp.request_bytes("POST", "/api/promote", body))
        except (BrokenPipeError, ConnectionResetError):
            continue
        assert answer.status == 413 and len(answer.body) < 1000, answer
    # 20,000 levels deep fit in the size limit and are parsed: the parser's limit answers.
    status, error = post("/api/fsck", b"[" * 20_000 + b"]" * 20_000)
    assert status == 400 and "nested too deeply" in str(error["error"]), error
    status, error = post("/api/fsck", b'{"deep": ' * 5_000)
    assert status == 400 and "not JSON" in str(error["error"]), error
    # A string is not a boolean: no deep check may run because of one.
    status, error = post("/api/fsck", b'{"deep": "false"}')
    assert status == 400 and '"deep"' in str(error["error"]), error
    status, error = post("/api/promote", json.dumps({"model": "y" * 5000}).encode())
    assert status == 400 and len(json.dumps(error)) < 1000, error
    status, error = post("/api/promote", json.dumps({"model": HF_MODEL, "extra": 1}).encode())
    assert status == 400 and '"extra"' in str(error["error"]), error
    for method, path in (("GET", "/nowhere"), ("DELETE", "/api/status"), ("GET", "/api/promote")):
        answer = cp.exchange(sock, cp.request_bytes(method, path, b""))
        assert answer.status in (404, 405), answer
        assert "error" in cp.json_of(answer)
    jobs = cp.json_of(cp.exchange(sock, cp.request_bytes("GET", "/api/jobs", b"")))
    assert jobs == {"jobs": []}, "a refused request started something"
    assert "fsck:" not in mount.log_text(), "a refused request ran a check"
    _assert_serving(mount, cold_store, hashes)


def test_the_job_history_stays_bounded(rig: tuple[Mount, dict[str, str]]) -> None:
    mount, _ = rig
    sock = mount.state_dir / "control.sock"
    body = json.dumps({"model": HF_MODEL}).encode()
    last = 0
    for _ in range(JOB_HISTORY + 20):
        job = cp.json_of(cp.exchange(sock, cp.request_bytes("POST", "/api/promote", body)))
        while JobState(str(job["state"])).active:
            job = cp.json_of(
                cp.exchange(sock, cp.request_bytes("GET", f"/api/jobs/{job['id']}", b""))
            )
        assert job["state"] == "done", job
        last = int(str(job["id"]))
    jobs = cp.json_of(cp.exchange(sock, cp.request_bytes("GET", "/api/jobs", b"")))["jobs"]
    assert isinstance(jobs, list)
    assert [j["id"] for j in jobs] == list(range(last - JOB_HISTORY + 1, last + 1))
    status = cp.json_of(cp.exchange(sock, cp.request_bytes("GET", "/api/status", b"")))
    assert len(status["jobs"]) == JOB_HISTORY  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from([HF_MODEL, "hf", "", "../etc", "[/bold]x"]) | json_values,
            "tier": st.sampled_from(["ram0", "nvme9", None]) | json_values,
            "deep": st.booleans() | json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
requests = st.tuples(
    st.sampled_from(ENDPOINTS)
    | st.tuples(
        st.sampled_from(["GET", "POST", "PUT"]),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
            lambda p: "/" + p
        ),
    ),
    bodies,
    st.sampled_from(["whole", "cut", "lie"]),
)


def test_random_requests_never_get_a_500_a_hang_or_a_dead_daemon(
    rig: tuple[Mount, dict[str, str]], cold_store: Path
) -> None:
    mount, hashes = rig
    sock = mount.state_dir / "control.sock"

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests)
    def probe(request: tuple[tuple[str, str], bytes, str]) -> None:
        (method, path), body, how = request
        if how == "whole":
            answer = cp.exchange(sock, cp.request_bytes(method, path, body))
            assert answer.status < 500, (method, path, body, answer)
            assert b"Traceback" not in answer.body
            if path.startswith("/api/") or answer.status >= 400:
                cp.json_of(answer)
        else:
            raw = cp.request_bytes(method, path, body, length=len(body) + 17)
            cp.hang_up(sock, raw if how == "lie" else raw[: len(raw) // 2])
        assert mount.process is not None and mount.process.poll() is None, "the daemon died"

    probe()
    _assert_serving(mount, cold_store, hashes)
