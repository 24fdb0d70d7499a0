"""Local pools at runtime: resize, disconnect and connect a real tmpfs tier while readers
read every model through the mount and check its bytes with xxh3.

Readers open, read and close in a loop (plain reads and shared mappings), and one handle
stays open across a disconnect: zero errors and zero wrong bytes throughout, and the held
handle keeps its bytes after its backing tmpfs is gone from the mount table.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fuse import crashutil as cu
from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory, xxh

MiB = tu.MiB
POOL = "ram0"
SIZES = {"a": 4 * MiB, "b": 4 * MiB, "c": 4 * MiB, "pinned": 4 * MiB}
tier_guard = tu.tier_guard

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(240)]


def model(name: str) -> str:
    return f"m/{name}.safetensors"


@dataclass
class Readers:
    """Threads that read every model through the mount until stopped, checking bytes."""

    mount: Mount
    want: dict[str, str]
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self, use_mmap: bool) -> None:
        while not self.stop.is_set():
            for name, digest in self.want.items():
                path = self.mount.mountpoint / name
                try:
                    got = _read_mapped(path) if use_mmap else _read_plain(path)
                except OSError as exc:
                    self.errors.append(f"{name}: {exc}")
                    continue
                self.reads += 1
                if got != digest:
                    self.errors.append(f"{name}: wrong bytes ({'mmap' if use_mmap else 'read'})")

    def __enter__(self) -> Readers:
        for use_mmap in (False, True):
            thread = threading.Thread(target=self._loop, args=(use_mmap,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _read_plain(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return xxh(f.read())


def _read_mapped(path: Path) -> str:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        return xxh(m[:])


def pools(mount: Mount) -> dict[str, dict[str, Any]]:
    with cu.control(mount) as client:
        return {p["name"]: p for p in client.pools()}


def tmpfs_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def hot(mount: Mount) -> set[str]:
    return {name for name, state in tu.states(tu.status(mount.state_dir)).items() if state == "hot"}


@pytest.fixture
def live(tier_guard: Path, mount_factory: MountFactory, cold_store: Path) -> Iterator[Mount]:
    want = {
        model(name): tu.write_random(cold_store / model(name), size, seed)
        for seed, (name, size) in enumerate(sorted(SIZES.items()))
    }
    extra = tu.tier_toml(POOL, tier_guard / POOL, "32M") + tu.policy_toml(promote_on_open=False)
    mount = mount_factory([("c", cold_store)], extra=extra)
    mount.want = want  # type: ignore[attr-defined]
    yield mount


def test_resize_disconnect_connect_under_readers(live: Mount) -> None:
    want: dict[str, str] = live.want  # type: ignore[attr-defined]
    path = Path(pools(live)[POOL]["path"])
    for name in ("a", "b", "c"):
        assert tu.promote_wait(live.state_dir, model(name))["state"] == "done"
    tu.cli_ok(live.config, "pin", model("pinned"))
    tu.wait_state(live.state_dir, model("pinned"), "hot")
    for name in ("b", "a", "pinned", "c"):
        assert tu.read_through(live.mountpoint / model(name)) == want[model(name)]
    # Shrink below what is used: the least recently read unpinned model (b) leaves first,
    # and only as many as must.
    result = tu.cli_ok(live.config, "pool", "resize", POOL, "13M")
    assert "resize done" in result.stdout
    assert tmpfs_size(path) == 13 * MiB
    assert hot(live) == {model("a"), model("c"), model("pinned")}
    assert tu.tier_row(tu.status(live.state_dir), POOL)["size"] == 13 * MiB

    with Readers(live, want) as readers:
        result = tu.cli_ok(live.config, "pool", "resize", POOL, "9M")
        assert tmpfs_size(path) == 9 * MiB
        left = hot(live)
        assert model("pinned") in left and len(left) == 2, left
        row = pools(live)[POOL]
        assert (row["state"], row["size"], row["used"]) == ("connected", 9 * MiB, 8 * MiB)

        # A pinned model that would not fit: one clear line, and nothing changes.
        refused = tu.cli(live.config, "pool", "resize", POOL, "3M")
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "pinned m/pinned.safetensors" in refused.stderr
        assert tmpfs_size(path) == 9 * MiB
        assert hot(live) == left
        assert pools(live)[POOL]["state"] == "connected"

        # Disconnect while a handle is open halfway through a hot file.
        held = tu.SplitReader(live.mountpoint / model("pinned"), "mmap")
        held.first_half()
        tu.cli_ok(live.config, "pool", "disconnect", POOL)
        assert not os.path.ismount(path)
        assert hot(live) == set()
        assert pools(live)[POOL]["state"] == "disconnected"
        assert held.second_half() == want[model("pinned")]
        held.close()
        assert "fsck: clean" in tu.cli_ok(live.config, "fsck").stdout

        # Nothing goes to a disconnected pool.
        job = tu.promote_wait(live.state_dir, model("a"))
        assert job["state"] == "failed", job

        tu.cli_ok(live.config, "pool", "connect", POOL)
        assert os.path.ismount(path)
        assert tmpfs_size(path) == 9 * MiB  # the size of the last resize
        assert tu.promote_wait(live.state_dir, model("a"))["state"] == "done"
        assert tu.read_through(live.mountpoint / model("a")) == want[model("a")]
    assert readers.reads > 0
    assert readers.errors == []


def test_disconnected_pool_stays_down_across_restart(live: Mount) -> None:
    path = Path(pools(live)[POOL]["path"])
    assert tu.promote_wait(live.state_dir, model("a"))["state"] == "done"
    tu.cli_ok(live.config, "pool", "disconnect", POOL)
    live.stop()
    live.start()
    assert not os.path.ismount(path)
    assert pools(live)[POOL]["state"] == "disconnected"
    listed = tu.cli_ok(live.config, "pool", "list").stdout
    assert f"{POOL} " in listed and "disconnected" in listed
    tu.cli_ok(live.config, "pool", "connect", POOL)
    assert pools(live)[POOL]["state"] == "connected"


def kill_at_fault(live: Mount, action: str, point: str) -> None:
    """Restart the daemon paused at fault ``point``, ask for ``action`` on the pool, and
    SIGKILL it once the pause is reached; it is left stopped, with the pause unset."""
    live.stop()
    live.extra_env["TIERFS_FAULT_PAUSE"] = point
    live.start()
    with cu.control(live) as client:
        client.pool_action(POOL, action)
    cu.wait_for_log(live, f"fault point {point} reached")
    live.kill()
    live.cleanup()
    del live.extra_env["TIERFS_FAULT_PAUSE"]


def test_crash_mid_disconnect_is_finished_at_the_next_start(
    live: Mount, mount_factory: MountFactory
) -> None:
    want: dict[str, str] = live.want  # type: ignore[attr-defined]
    path = Path(pools(live)[POOL]["path"])
    assert tu.promote_wait(live.state_dir, model("a"))["state"] == "done"
    kill_at_fault(live, "disconnect", "pool_disconnect_close")
    assert os.path.ismount(path)  # killed before its demotions and unmount
    live.start()
    assert not os.path.ismount(path)
    assert pools(live)[POOL]["state"] == "disconnected"
    assert hot(live) == set()
    assert tu.read_through(live.mountpoint / model("a")) == want[model("a")]


def test_pool_errors_are_one_line(live: Mount) -> None:
    for args, text in (
        (("pool", "connect", "nope"), "unknown pool 'nope' (pools: ram0)"),
        (("pool", "resize", POOL, "lots"), "expected a size"),
        (("pool", "resize", POOL, "512K"), "too small"),
    ):
        result = tu.cli(live.config, *args)
        assert result.returncode == 1, result
        assert text in result.stderr and result.stderr.count("\n") == 1, result.stderr


def http(mount: Mount, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    """One request to the control socket with curl, as another client would make it."""
    argv = ["curl", "-s", "--unix-socket", str(mount.state_dir / "control.sock"), "-X", method]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", body]
    done = subprocess.run(
        [*argv, "-w", "\n%{http_code}", f"http://tierfs{path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    payload, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(payload)


def test_api_contract(live: Mount) -> None:
    code, listed = http(live, "GET", "/api/pools")
    assert code == 200
    (row,) = listed["pools"]
    assert row == {
        "name": POOL,
        "kind": "tmpfs",
        "path": row["path"],
        "size": 32 * MiB,
        "used": 0,
        "free": 32 * MiB,
        "state": "connected",
        "error": None,
    }
    code, started = http(live, "POST", f"/api/pools/{POOL}/resize", '{"size": "16M"}')
    assert code == 202
    op = started["operation"]
    assert set(op) == {"id", "pool", "action", "state", "steps", "error"}
    assert (op["pool"], op["action"]) == (POOL, "resize")
    assert [s["name"] for s in op["steps"]] == ["plan", "demote", "release", "remount"]
    assert all(set(s) == {"name", "state", "detail"} for s in op["steps"])

    def finished() -> dict[str, Any] | None:
        code, found = http(live, "GET", f"/api/pools/operations/{op['id']}")
        assert code == 200
        return found["operation"] if found["operation"]["state"] != "running" else None

    done = tu.wait_for(finished, what="the resize")
    assert done["state"] == "done" and {s["state"] for s in done["steps"]} == {"done"}
    assert pools(live)[POOL]["size"] == 16 * MiB

    for method, path, body, want_code in (
        ("POST", "/api/pools/nope/connect", None, 404),
        ("POST", f"/api/pools/{POOL}/explode", None, 404),
        ("POST", f"/api/pools/{POOL}/resize", '{"size": "huge"}', 400),
        ("POST", f"/api/pools/{POOL}/resize", '{"size": "8G", "x": 1}', 400),
        ("GET", "/api/pools/operations/999", None, 404),
    ):
        code, answer = http(live, method, path, body)
        assert code == want_code, (path, answer)
        assert set(answer) == {"error", "errno"} and "\n" not in answer["error"]


def test_crash_mid_connect_is_resumed_at_the_next_start(live: Mount) -> None:
    want: dict[str, str] = live.want  # type: ignore[attr-defined]
    path = Path(pools(live)[POOL]["path"])
    tu.cli_ok(live.config, "pool", "disconnect", POOL)
    kill_at_fault(live, "connect", "pool_connect_mount")
    assert os.path.ismount(path)  # mounted, but never opened for copies
    live.start()
    assert pools(live)[POOL]["state"] == "connected"
    assert tu.promote_wait(live.state_dir, model("a"))["state"] == "done"
    assert tu.read_through(live.mountpoint / model("a")) == want[model("a")]


def test_a_resize_holds_across_restarts_until_the_config_changes(live: Mount) -> None:
    path = Path(pools(live)[POOL]["path"])
    tu.cli_ok(live.config, "pool", "resize", POOL, "16M")
    live.stop()
    live.start()
    assert tmpfs_size(path) == 16 * MiB
    assert pools(live)[POOL]["size"] == 16 * MiB
    live.stop()
    assert tmpfs_size(path) == 16 * MiB  # left mounted, hot copies and all
    live.config.write_text(live.config.read_text().replace('size = "32M"', 'size = "24M"'))
    live.start()
    assert tmpfs_size(path) == 24 * MiB
    assert pools(live)[POOL]["size"] == 24 * MiB
