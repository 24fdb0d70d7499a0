"""Helpers shared by the real-mount tests of the tiering layer.

Tier tmpfs mounts made by tierfs outlive the daemon, so every test that configures a
tier runs under `tier_guard`, which detaches whatever is still mounted below the test's
temp directory once the mounts made by `mount_factory` are gone.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.mounting import file_hash, wait_for, xxh
from tests.fuse.mounting import run_cli as cli
from tierfs.control.client import ControlClient
from tierfs.mountinfo import read_mounts
from tierfs.states import JobState

MiB = 1 << 20

# Bytes ---------------------------------------------------------------------------------


def write_random(path: Path, size: int, seed: int) -> str:
    """Write `size` deterministic pseudo-random bytes; returns their xxh3-128."""
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return xxh(data)


def drop_cache(path: Path) -> None:
    """Drop the page cache of a file (here: a file in the FUSE mount).

    tierfs opens with keep_cache and pushes read-ahead into the page cache, so without
    this a read could be answered by the kernel alone and prove nothing about the copy
    the daemon serves from.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_through(path: Path) -> str:
    """The xxh3-128 of a file read through the mount, its page cache dropped first."""
    drop_cache(path)
    return file_hash(path)


class SplitReader:
    """Reads a file in two halves around something that happens in between.

    `mode` is "read" (chunked ``read()`` on an unbuffered fd) or "mmap" (a shared mapping
    read page by page). Before the second half, the page cache of the file (and, for
    mmap, the mapping's pages) is dropped, so the rest must come from the daemon through
    the handle opened at the start.
    """

    def __init__(self, path: Path, mode: str, chunk: int = 256 << 10) -> None:
        self.path = path
        self.mode = mode
        self.chunk = chunk
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.half = (self.size // 2) & ~(mmap.PAGESIZE - 1)
        self.parts: list[bytes] = []
        self.map: mmap.mmap | None = None
        if mode == "mmap":
            self.map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
        elif mode != "read":
            raise ValueError(mode)

    def _read(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(self.chunk, end - pos)
            if self.map is not None:
                block = bytes(self.map[pos : pos + n])
            else:
                block = os.pread(self.fd, n, pos)
            assert block, f"unexpected end of {self.path} at {pos} of {self.size}"
            self.parts.append(block)
            pos += len(block)

    def first_half(self) -> None:
        self._read(0, self.half)

    def second_half(self) -> str:
        if self.map is not None:
            self.map.madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self._read(self.half, self.size)
        return xxh(b"".join(self.parts))

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        os.close(self.fd)


def assert_read_by_open_handles(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Check, from the mount's stats around `SplitReader.second_half`, that the rest came
    through the handles opened before: served by the daemon from their fds (its read
    counter moves, so it was not the page cache alone), or with passthrough by the kernel
    from the backing files registered at open (the daemon sees no read and no new open)."""
    if after["read_mode"] == "passthrough":
        assert after["read_bytes"] == before["read_bytes"], "the daemon served a passthrough read"
        assert after["opens"] == before["opens"], "the reader opened the file again"
    else:
        assert after["read_bytes"] > before["read_bytes"], "the rest came from the page cache only"


# The CLI and the control API -------------------------------------------------------------


def cli_ok(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI; it must succeed."""
    result = cli(config, *args, timeout=timeout)
    assert result.returncode == 0, (
        f"tierfs {' '.join(args)} exited {result.returncode}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def cli_json(config: Path) -> dict[str, Any]:
    """``tierfs status --json``, parsed."""
    return dict(json.loads(cli_ok(config, "status", "--json").stdout))


def client(state_dir: Path) -> ControlClient:
    """A client of the control socket of the daemon whose state is in `state_dir`."""
    return ControlClient(state_dir / "control.sock")


def status(state_dir: Path) -> dict[str, Any]:
    with client(state_dir) as c:
        return c.status()


def model_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    for m in report["models"]:
        if m["name"] == name:
            return dict(m)
    raise AssertionError(f"{name} not in status: {[m['name'] for m in report['models']]}")


def states(report: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["state"] for m in report["models"]}


def tier_row(report: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(t for t in report["tiers"] if t["name"] == name))


def wait_state(state_dir: Path, model: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        report = status(state_dir)
        return report if model_of(report, model)["state"] == state else None

    return wait_for(probe, timeout, what=f"{model} to be {state}")


def wait_idle(state_dir: Path, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until no job is queued or running; returns that status."""

    def probe() -> dict[str, Any] | None:
        report = status(state_dir)
        busy = [j for j in report["jobs"] if JobState(j["state"]).active]
        return None if busy else report

    return wait_for(probe, timeout, what="jobs to finish")


def promote_wait(
    state_dir: Path, model: str, tier: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    """Promote through the control API and wait for the job; returns the finished job."""
    with client(state_dir) as c:
        job = c.promote(model, tier)
        deadline = time.monotonic() + timeout
        while JobState(job["state"]).active:
            assert time.monotonic() < deadline, f"promotion of {model} never ended: {job}"
            time.sleep(0.05)
            job = c.job(job["id"])
    return job


def hot_sum(report: dict[str, Any], tier: str) -> int:
    """Bytes of all models hot on `tier` (their files are distinct in these tests)."""
    return sum(m["size"] for m in report["models"] if m["state"] == "hot" and tier in m["tiers"])


# Config snippets -------------------------------------------------------------------------


def tier_toml(
    name: str,
    path: Path,
    size: str,
    *,
    rank: int = 0,
    mount_tmpfs: bool | None = None,
    kind: str | None = None,
) -> str:
    lines = ["[[tier]]", f'name = "{name}"', f'path = "{path}"', f'size = "{size}"']
    lines.append(f"rank = {rank}")
    if kind is not None:
        lines.append(f'kind = "{kind}"')
    if mount_tmpfs is not None:
        lines.append(f"mount_tmpfs = {'true' if mount_tmpfs else 'false'}")
    return "\n".join(lines) + "\n"


def policy_toml(**values: object) -> str:
    lines = ["[policy]"]
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = f'"{value}"'
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


# Mounts ----------------------------------------------------------------------------------


def mounts_under(root: Path) -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, super options) of every mount at or below `root`."""
    base = Path(os.path.realpath(root))
    return [
        (str(e.mountpoint), e.fstype, e.super_options)
        for e in read_mounts()
        if e.mountpoint == base or base in e.mountpoint.parents
    ]


def lazy_umount(path: Path | str) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def unmount_all_under(root: Path) -> None:
    # Deepest first; a path can hold stacked mounts, so repeat until none is left.
    for _ in range(8):
        found = mounts_under(root)
        if not found:
            return
        for point, _, _ in sorted(found, key=lambda m: -len(m[0])):
            lazy_umount(point)


@contextlib.contextmanager
def bind_over(source: Path, target: Path) -> Iterator[None]:
    """Bind-mount `source` over `target` for the duration (unmounted in any case)."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextlib.contextmanager
def tmpfs_at(path: Path, size: str, mode: str = "0700") -> Iterator[Path]:
    """A tmpfs at `path`; private by default, as tierfs requires of a tier."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode={mode}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        lazy_umount(path)


def tier_guard_fixture(tmp_path: Path) -> Iterator[Path]:
    """A directory for tiers (and bind mounts); everything mounted below the test's
    temp directory is detached at teardown.

    Request it *before* `mount_factory`, so that it is torn down after the daemons.
    """
    root = tmp_path / "tiers"
    root.mkdir()
    try:
        yield root
    finally:
        unmount_all_under(tmp_path)
        leftover = mounts_under(tmp_path)
        assert not leftover, f"mounts left behind: {leftover}"


tier_guard = pytest.fixture(tier_guard_fixture)


def filesystem_type(path: Path) -> str:
    """The type of the file system `path` lies on (from findmnt)."""
    result = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True
    )
    return result.stdout.strip()
