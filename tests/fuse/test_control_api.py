"""The control API over a real daemon's unix socket, and `tierfs status` without one."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fuse.crashutil import (
    HF_MODEL,
    TIER,
    TierDirs,
    build_hf_model,
    manual_tier_toml,
    mounted_bytes,
    xxh,
)
from tests.fuse.mounting import Mount, MountFactory
from tests.fuse.tierutil import cli_ok
from tierfs.states import JobState

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TierDirs]:
    dirs = TierDirs(tmp_path)
    yield dirs
    dirs.cleanup()


@pytest.fixture
def api_mount(tiers: TierDirs, mount_factory: MountFactory, cold_store: Path) -> Mount:
    build_hf_model(cold_store)
    # Each copy pauses a moment once written, so a job can be watched while it runs.
    return mount_factory(
        [("cold", cold_store)],
        extra=manual_tier_toml(tiers.new()),
        env={"TIERFS_FAULT_PAUSE": "copy_written", "TIERFS_FAULT_PAUSE_S": "0.3"},
    )


@pytest.fixture
def http(api_mount: Mount) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(api_mount.state_dir / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://tierfs", timeout=30) as client:
        yield client


def test_socket_is_owner_only(api_mount: Mount) -> None:
    sock = api_mount.state_dir / "control.sock"
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700


def test_status_shape(api_mount: Mount, http: httpx.Client) -> None:
    response = http.get("/api/status")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert data["running"] is True
    assert data["mountpoint"] == str(api_mount.mountpoint)
    assert [c["name"] for c in data["cold"]] == ["cold"]
    (tier,) = data["tiers"]
    assert tier["name"] == TIER and tier["kind"] == "ram" and tier["mounted"] is True
    assert tier["size"] == 64 << 20 and tier["used"] == 0 and tier["free"] == tier["size"]
    (model,) = data["models"]
    assert model["name"] == HF_MODEL and model["kind"] == "hf_dir"
    assert model["state"] == "cold" and model["tiers"] == []
    assert model["files"] == [
        f"{HF_MODEL}/config.json",
        f"{HF_MODEL}/model-00001-of-00002.safetensors",
        f"{HF_MODEL}/model-00002-of-00002.safetensors",
        f"{HF_MODEL}/tokenizer.json",
    ]
    assert model["hot_bytes"] == 0 and model["pinned"] is False
    assert model["size"] > 5 << 20
    assert data["jobs"] == [] and data["conflicts"] == [] and data["problems"] == []
    assert set(data["reads"]) >= {"read_bytes", "read_requests", "opens"}


BAD_BODIES = [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"tier": "ram0"}', '"model"'),
    (b'{"model": 7}', '"model"'),
    (b'{"model": "hf/mini", "tier": 3}', '"tier"'),
]


def test_bad_requests_are_400_with_a_message(http: httpx.Client) -> None:
    for body, needle in BAD_BODIES:
        for endpoint in ("/api/promote", "/api/pin"):
            response = http.post(
                endpoint, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (endpoint, body, response.text)
            error = response.json()
            assert needle in error["error"], (body, error)
            assert isinstance(error["errno"], int)
    assert http.get("/api/jobs").json() == {"jobs": []}


def test_unknown_model_and_tier_are_404_naming_them(http: httpx.Client) -> None:
    for endpoint in ("/api/promote", "/api/demote", "/api/pin", "/api/unpin"):
        response = http.post(endpoint, json={"model": "no-such-model"})
        assert response.status_code == 404, (endpoint, response.text)
        assert "no-such-model" in response.json()["error"]
    for endpoint in ("/api/promote", "/api/pin"):
        response = http.post(endpoint, json={"model": HF_MODEL, "tier": "nvme9"})
        assert response.status_code == 404, (endpoint, response.text)
        error = response.json()["error"]
        assert "nvme9" in error and TIER in error, error
    assert http.get("/api/jobs/4711").status_code == 404
    assert http.get("/api/jobs/abc").status_code == 400
    # Nothing was started by any of these.
    assert http.get("/api/jobs").json() == {"jobs": []}


def test_job_progresses_to_done_and_metrics_follow(
    api_mount: Mount, http: httpx.Client, cold_store: Path
) -> None:
    response = http.post("/api/promote", json={"model": HF_MODEL})
    assert response.status_code == 202
    job = response.json()
    assert job["model"] == HF_MODEL and job["tier"] == TIER
    seen = [job["state"]]
    deadline = time.monotonic() + 30
    while JobState(job["state"]).active:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = http.get(f"/api/jobs/{job['id']}").json()
        seen.append(job["state"])
    assert "running" in seen and seen[-1] == "done", seen
    assert job["bytes_done"] == job["bytes_total"] > 5 << 20
    assert job["error"] is None and job["finished"] >= job["started"]
    assert http.get("/api/jobs").json()["jobs"][0]["id"] == job["id"]

    status = http.get("/api/status").json()
    (model,) = status["models"]
    assert model["state"] == "hot" and model["tiers"] == [TIER]

    before = _parse_prometheus(http.get("/metrics").text)
    shard = f"{HF_MODEL}/model-00001-of-00002.safetensors"
    data = mounted_bytes(api_mount.mountpoint, shard)
    assert xxh(data) == xxh((cold_store / shard).read_bytes())
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = _parse_prometheus(response.text)
    if api_mount.stats()["read_mode"] == "passthrough":
        # The kernel read the hot copy itself; the daemon only answered the open.
        opened = 'tierfs_opens_by_mode_total{mode="passthrough"}'
        assert metrics[opened] == before[opened] + 1
        assert metrics["tierfs_read_bytes_total"] == before["tierfs_read_bytes_total"]
    else:
        # The bytes reached the reader either as read replies or as pages pushed ahead.
        served = metrics["tierfs_read_bytes_total"] + metrics["tierfs_prefetch_bytes_total"]
        assert served - before["tierfs_read_bytes_total"] - before[
            "tierfs_prefetch_bytes_total"
        ] >= len(data)
        assert metrics["tierfs_read_bytes_total"] > before["tierfs_read_bytes_total"]
    assert metrics["tierfs_read_bytes_total"] == api_mount.stats()["read_bytes"]
    assert metrics[f'tierfs_tier_used_bytes{{tier="{TIER}"}}'] == job["bytes_total"]
    assert metrics[f'tierfs_tier_capacity_bytes{{tier="{TIER}"}}'] == 64 << 20
    assert metrics["tierfs_copies_active"] == 0
    assert metrics["tierfs_up"] == 1
    assert "# TYPE tierfs_read_bytes_total counter" in response.text

    # Without a daemon, `tierfs status` reads the catalog and still knows what is hot.
    assert api_mount.stop() == 0
    assert not (api_mount.state_dir / "control.sock").exists() or not _answers(http)
    offline = json.loads(cli_ok(api_mount.config, "status", "--json").stdout)
    assert offline["running"] is False
    (model,) = offline["models"]
    assert model["state"] == "hot" and model["tiers"] == [TIER], model
    text = cli_ok(api_mount.config, "status").stdout
    assert "not mounted" in text
    row = next(line for line in text.splitlines() if line.strip().startswith(HF_MODEL))
    assert "hot" in row.split() and TIER in row, row


def _answers(http: httpx.Client) -> bool:
    try:
        http.get("/api/status")
    except httpx.TransportError:
        return False
    return True


def _parse_prometheus(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
