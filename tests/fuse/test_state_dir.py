"""The state directory: one daemon at a time, and only tierfs's user may write it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuse.mounting import MountFactory, run_cli

pytestmark = pytest.mark.timeout(90)


def _model(cold: Path) -> None:
    (cold / "m").mkdir(exist_ok=True)
    (cold / "m" / "a.safetensors").write_bytes(b"x" * 4096)


def test_a_second_daemon_on_one_state_dir_is_refused_naming_the_first(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    _model(cold_store)
    first = mount_factory([("cold", cold_store)], name="first")
    # The same state_dir, another mountpoint.
    second = mount_factory([("cold", cold_store)], name="second", start=False)
    config = second.config.read_text().replace(str(second.state_dir), str(first.state_dir))
    second.config.write_text(config)
    result = run_cli(second.config, "mount", "--foreground", timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tierfs: state_dir ") and f"(pid {first.pid})" in line, line
    # The first daemon lost nothing: it still serves, and its socket is its own.
    assert (first.mountpoint / "m" / "a.safetensors").read_bytes() == b"x" * 4096
    assert first.process is not None and first.process.poll() is None
    assert run_cli(first.config, "status").returncode == 0
    # The lock goes with its daemon.
    assert first.stop() == 0
    assert run_cli(first.config, "fsck").returncode == 0, "the lock outlived its daemon"


def test_a_state_dir_another_user_owns_is_refused(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    _model(cold_store)
    mount = mount_factory([("cold", cold_store)], start=False)
    mount.state_dir.mkdir(mode=0o700)
    os.chown(mount.state_dir, 65534, 65534)
    result = run_cli(mount.config, "mount", "--foreground", timeout=30)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "belongs to uid 65534" in line and str(mount.state_dir) in line, line
    assert not (mount.state_dir / "catalog.sqlite").exists()
