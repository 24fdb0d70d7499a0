"""Fixtures that mount tierfs for real.

The daemon runs in a subprocess (`python -m tierfs mount --foreground`). A fixture
waits until the kernel lists the mount, and always unmounts afterwards, even when the
daemon died or the test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from tierfs.daemon.service import SERVING, is_tierfs, lazy_unmount, mount_entry

MOUNT_TIMEOUT_S = 30.0
# The read mode every test mount gets unless a test names one: `[read] passthrough` as
# the config spells it. scripts/test runs the FUSE suite once as "auto" (passthrough on
# this kind of machine) and once as "off" (the daemon serves every read).
READ_MODE = os.environ.get("TIERFS_TEST_PASSTHROUGH", "auto")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fuse)


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
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.extra_env}
        start = self.log.stat().st_size if self.log.exists() else 0
        ready = f"{SERVING} {self.mountpoint}"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tierfs", "mount", "--foreground", "-c", str(self.config)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            # The daemon's own word, not the mount table: a stale mount is in the table too.
            if ready in self.log_text()[start:] and is_tierfs(mount_entry(self.mountpoint)):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"tierfs exited {self.process.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"tierfs did not mount within {MOUNT_TIMEOUT_S}s:\n{self.log_text()}")

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
        import json

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


def wait_until(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until it is true, or fail the test naming `what`."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """Make and start mounts over given cold stores; all are unmounted at teardown."""
    mounts: list[Mount] = []

    def make(
        cold: list[tuple[str, Path]],
        *,
        extra: str = "",
        top: str = "",
        name: str = "m",
        start: bool = True,
        env: dict[str, str] | None = None,
        passthrough: str | None = None,
    ) -> Mount:
        base = tmp_path / f"tierfs-{name}"
        mountpoint = base / "mnt"
        mountpoint.mkdir(parents=True, exist_ok=True)
        config = write_config(
            base / "config.toml",
            mountpoint=mountpoint,
            state_dir=base / "state",
            cold=cold,
            extra=extra,
            top=top,
            passthrough=passthrough,
        )
        mount = Mount(
            config=config,
            mountpoint=mountpoint,
            state_dir=base / "state",
            log=base / "tierfs.log",
            extra_env=env or {},
        )
        mounts.append(mount)
        return mount.start() if start else mount

    yield make
    for mount in mounts:
        mount.cleanup()


@pytest.fixture
def cold_store(tmp_path: Path) -> Path:
    root = tmp_path / "cold"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def demo_cold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo cold store (HF dir, hub cache, Ollama store, GGUF), built once."""
    from tierfs.ops.demo import build_demo_store

    root = tmp_path_factory.mktemp("demo") / "cold"
    build_demo_store(root)
    return root


@pytest.fixture
def demo_mount(mount_factory: MountFactory, demo_cold: Path) -> Mount:
    return mount_factory([("demo", demo_cold)], name="demo")


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.fail("FUSE tests need /dev/fuse and fusermount3 (apt install fuse3)")
