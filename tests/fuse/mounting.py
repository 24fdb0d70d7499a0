"""Mounting tierfs for real in tests: configs, a running daemon, and byte checks.

The daemon runs in a subprocess (`python -m tierfs mount --foreground`), started by
`tierfs.daemon.spawn.start_daemon`, the same code ``tierfs mount`` uses. The fixtures in
conftest.py build on these; tests import helpers from here, never from conftest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import xxhash

from tierfs.daemon.mounting import lazy_unmount
from tierfs.daemon.spawn import start_daemon
from tierfs.errors import MountError
from tierfs.mountinfo import mount_entry

T = TypeVar("T")

MOUNT_TIMEOUT_S = 30.0
# The read mode every test mount gets unless a test names one: `[read] passthrough` as
# the config spells it. scripts/test runs the FUSE suite once as "auto" (passthrough on
# this kind of machine) and once as "off" (the daemon serves every read).
READ_MODE = os.environ.get("TIERFS_TEST_PASSTHROUGH", "auto")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    path: Path,
    *,
    mountpoint: Path,
    state_dir: Path,
    cold: list[tuple[str, Path]],
    extra: str = "",
    top: str = "",
    passthrough: str | None = None,
) -> Path:
    """Write a tierfs TOML config for a test mount.

    `top` holds top-level keys; `extra` is appended after the tables ([[tier]], [policy]).
    `passthrough` goes into the [read] table, which `extra` may already hold.
    """
    # Test mounts run side by side: none gets the web listener unless its test asks.
    if "[web]" not in extra:
        extra = extra + '\n[web]\nlisten = ""\n'
    setting = f"passthrough = {_toml_value(passthrough or READ_MODE)}\n"
    if "[read]\n" in extra:
        extra = extra.replace("[read]\n", "[read]\n" + setting, 1)
    else:
        extra = extra + "\n[read]\n" + setting
    lines = [
        f"mountpoint = {_toml_value(mountpoint)}",
        f"state_dir = {_toml_value(state_dir)}",
        'log_level = "debug"',
        top,
    ]
    for name, root in cold:
        lines += ["[[cold]]", f"name = {_toml_value(name)}", f"path = {_toml_value(root)}"]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@dataclass
class Mount:
    """A running tierfs daemon and its mountpoint."""

    config: Path
    mountpoint: Path
    state_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Mount:
        """Start the daemon and wait until it serves; fail naming its whole log."""
        try:
            self.process = start_daemon(
                self.config,
                self.mountpoint,
                self.log,
                timeout=MOUNT_TIMEOUT_S,
                env={**os.environ, **self.extra_env},
            )
        except MountError as exc:
            raise RuntimeError(f"{exc}\n{self.log_text()}") from None
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the daemon with `sig` and wait for it; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon, leaving a stale mount behind."""
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        if mount_entry(self.mountpoint) is not None:
            lazy_unmount(self.mountpoint)

    def stats(self) -> dict[str, int]:
        """The daemon's read counters (the mount root's ``user.tierfs.stats``)."""
        return dict(json.loads(os.getxattr(self.mountpoint, "user.tierfs.stats")))


MountFactory = Callable[..., Mount]

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tierfs ARGS -c CONFIG`` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "tierfs", *args, "-c", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def xxh(data: bytes | bytearray | memoryview) -> str:
    """xxh3-128 of bytes in memory, as tierfs records it."""
    return xxhash.xxh3_128_hexdigest(data)


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """xxh3-128 of a whole file, read in `chunk`-sized blocks."""
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def wait_for(
    probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy, and return that.

    Raises:
        AssertionError: after `timeout` seconds, naming `what` and the last answer.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: {last!r}")
