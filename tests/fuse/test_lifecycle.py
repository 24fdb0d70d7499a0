"""The life of a real mount: signals, a killed daemon, refusals, --daemon and unmount.

What a mount presents meanwhile is in test_mount_view.py."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fuse.lifeutil import (
    mounted,
    populate,
    snapshot_tree,
    tierfs_cli,
)
from tests.fuse.mounting import Mount, MountFactory, wait_for
from tierfs.daemon.mounting import is_tierfs, lazy_unmount
from tierfs.mountinfo import MountEntry, mount_entry, read_mounts

pytestmark = pytest.mark.timeout(180)


# -- helpers ----------------------------------------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True once `pid` exited (a zombie counts as gone: it serves nothing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "Z" in state.split()[1]


def mounts_at(mountpoint: Path) -> list[MountEntry]:
    """Every mount whose mount point is exactly `mountpoint` (mounts stack)."""
    return [e for e in read_mounts() if e.mountpoint == mountpoint]


def quiet(mount: Mount) -> Mount:
    """Use the default log level, as a user would: refusals must not drown in debug lines."""
    mount.config.write_text(mount.config.read_text().replace('log_level = "debug"\n', ""))
    return mount


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    # Content first (ignoring any line wrapping), then the one-line promise itself.
    unwrapped = proc.stderr.strip().replace("\n", "")
    assert unwrapped.startswith("tierfs: "), proc.stderr
    for word in words:
        assert word in unwrapped, f"{word!r} not in {proc.stderr!r}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{proc.stderr}"
    return lines[0]


# -- signals and a killed daemon --------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly_and_exits_zero(
    mount_factory: MountFactory, cold_store: Path, sig: signal.Signals
) -> None:
    files = populate(cold_store)
    before = snapshot_tree(cold_store)
    m = mount_factory([("c", cold_store)])
    for rel, data in files.items():
        assert (m.mountpoint / rel).read_bytes() == data
    # An open handle must not block unmounting: it stays open across the stop.
    with open(m.mountpoint / "top.bin", "rb") as handle:
        assert handle.read(4096) == files["top.bin"][:4096]
        rc = m.stop(sig)
    assert rc == 0, m.log_text()
    assert mount_entry(m.mountpoint) is None
    assert not os.path.ismount(m.mountpoint)
    assert os.listdir(m.mountpoint) == []
    assert f"{sig.name} received" in m.log_text()
    assert "Traceback" not in m.log_text()
    assert snapshot_tree(cold_store) == before


def test_kill9_leaves_stale_mount_that_next_mount_recovers(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    files = populate(cold_store)
    m = mount_factory([("c", cold_store)])
    assert (m.mountpoint / "top.bin").read_bytes() == files["top.bin"]
    m.kill()
    # The kernel still lists the mount, but nothing answers it.
    assert is_tierfs(mount_entry(m.mountpoint))
    with pytest.raises(OSError) as info:
        os.stat(m.mountpoint / "models")
    assert info.value.errno == errno.ENOTCONN

    log_before = len(m.log_text())

    def new_log() -> str:
        return m.log_text()[log_before:]

    # Mount.start() returns at once here (the stale entry looks mounted to it), so wait for
    # the new daemon's own verdict: it mounted, or it exited.
    m.start()
    process = m.process
    assert process is not None
    wait_for(
        lambda: process.poll() is not None or "tierfs.daemon.service: mounted " in new_log(),
        30,
        what="the new daemon to mount or exit",
    )
    assert process.poll() is None, f"the new daemon did not recover the stale mount:\n{new_log()}"
    assert re.search(r"WARNING.*stale", new_log()), new_log()
    assert str(m.mountpoint) in new_log()
    # Exactly one tierfs mount there now (the stale one was detached, not stacked under).
    entries = mounts_at(m.mountpoint)
    assert len(entries) == 1, entries
    for rel, data in files.items():
        assert (m.mountpoint / rel).read_bytes() == data
    assert m.stop() == 0
    assert mount_entry(m.mountpoint) is None


def test_fixture_cleanup_detaches_mount_of_killed_daemon(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    populate(cold_store)
    m = mount_factory([("c", cold_store)])
    m.kill()
    assert mount_entry(m.mountpoint) is not None
    m.cleanup()
    assert mount_entry(m.mountpoint) is None
    assert os.listdir(m.mountpoint) == []


# -- refusals ---------------------------------------------------------------------------------


def test_mount_refuses_missing_mountpoint(mount_factory: MountFactory, cold_store: Path) -> None:
    populate(cold_store)
    m = quiet(mount_factory([("c", cold_store)], start=False))
    m.mountpoint.rmdir()
    proc = tierfs_cli("mount", "--foreground", "-c", str(m.config))
    assert_one_line_refusal(proc, str(m.mountpoint), "does not exist")
    assert mount_entry(m.mountpoint) is None


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_mount_refuses_busy_mountpoint(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path, kind: str
) -> None:
    populate(cold_store)
    m = quiet(mount_factory([("c", cold_store)], start=False))
    other = tmp_path / "other"
    other.mkdir()
    with mounted(kind, m.mountpoint, other):
        before = mount_entry(m.mountpoint)
        proc = tierfs_cli("mount", "--foreground", "-c", str(m.config))
        assert_one_line_refusal(proc, str(m.mountpoint), "busy")
        # The other file system is left alone.
        assert mount_entry(m.mountpoint) == before
    assert mount_entry(m.mountpoint) is None


def test_mount_refuses_when_tierfs_already_mounted(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    files = populate(cold_store)
    m = mount_factory([("c", cold_store)])
    quiet(m)
    proc = tierfs_cli("mount", "--foreground", "-c", str(m.config))
    assert_one_line_refusal(proc, str(m.mountpoint), "already mounted")
    # The first mount still serves.
    assert m.process is not None and m.process.poll() is None
    assert (m.mountpoint / "top.bin").read_bytes() == files["top.bin"]
    entries = mounts_at(m.mountpoint)
    assert len(entries) == 1, entries


# -- --daemon and unmount ---------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_mount_daemon_detaches_and_unmount_stops_it(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    files = populate(cold_store)
    m = quiet(mount_factory([("c", cold_store)], start=False))
    pid = None
    try:
        started = time.monotonic()
        proc = tierfs_cli("mount", "--daemon", "-c", str(m.config))
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 60
        # Mounted by the time the command returned.
        assert is_tierfs(mount_entry(m.mountpoint))
        match = re.search(r"\(pid\s*(\d+),", proc.stdout.replace("\n", ""))
        assert match, proc.stdout
        pid = int(match.group(1))
        assert not pid_gone(pid)
        # Detached: its own session, so the terminal's signals don't reach it.
        assert os.getsid(pid) == pid
        for rel, data in files.items():
            assert (m.mountpoint / rel).read_bytes() == data

        proc = tierfs_cli("unmount", "-c", str(m.config))
        assert proc.returncode == 0, proc.stderr
        assert mount_entry(m.mountpoint) is None
        wait_for(lambda: pid_gone(pid), 30, what="the daemon to exit after unmount")
        log = (m.state_dir / "tierfs.log").read_text()
        assert "Traceback" not in log, log
    finally:
        if mount_entry(m.mountpoint) is not None:
            lazy_unmount(m.mountpoint)
        if pid is not None and not pid_gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_unmount_refuses_when_nothing_is_mounted(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    populate(cold_store)
    m = mount_factory([("c", cold_store)], start=False)
    proc = tierfs_cli("unmount", str(m.mountpoint))
    assert_one_line_refusal(proc, str(m.mountpoint), "no tierfs")
