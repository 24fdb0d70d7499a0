"""Mount-time tier problems: `tierfs mount` refuses with one clear line, mounts nothing.

And the happy path: tierfs mounts its own tmpfs, of the configured size, where asked.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fuse import tierutil as tu
from tests.fuse.mounting import Mount, MountFactory
from tierfs.config import Config, config_from_dict
from tierfs.daemon import service
from tierfs.daemon.service import Daemon
from tierfs.daemon.statedir import StateDir
from tierfs.errors import NamespaceError, TierError

MiB = tu.MiB
tier_guard = tu.tier_guard

pytestmark = pytest.mark.timeout(120)


def cold_model(cold: Path) -> None:
    (cold / "m").mkdir(exist_ok=True)
    (cold / "m" / "a.safetensors").write_bytes(b"x" * 4096)


def config_with(
    mount_factory: MountFactory, cold: Path, path: Path, size: str, mount_tmpfs: bool | None
) -> Mount:
    cold_model(cold)
    extra = tu.tier_toml("ram0", path, size, mount_tmpfs=mount_tmpfs)
    return mount_factory([("c", cold)], extra=extra, start=False)


def refused(mount: Mount, root: Path, *needles: str) -> str:
    """Run `tierfs mount`; it must fail with one `tierfs:` line naming every needle."""
    before = tu.mounts_under(root)
    try:
        result = tu.cli(mount.config, "mount", "--foreground", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("tierfs mount did not refuse: it kept running (mounted?)")
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tierfs:")]
    assert len(errors) == 1, f"expected one error line: {result.stderr!r}"
    line = errors[0]
    assert "'ram0'" in line, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    # Nothing new is mounted: no FUSE mount, no tmpfs.
    assert tu.mounts_under(root) == before
    assert not tu.mounts_under(mount.mountpoint)
    return line


def test_missing_tier_path_without_mount_tmpfs(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    path = tier_guard / "nowhere"
    mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=False)
    refused(mount, tmp_path, str(path), "no such directory")
    assert not path.exists(), "the refused mount created the tier directory"


def test_tier_not_ram_backed(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    path = tmp_path / "on-disk"
    path.mkdir()
    fstype = tu.filesystem_type(path)
    assert fstype not in ("tmpfs", "ramfs"), f"{path} is on {fstype}: not a useful test"
    mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=False)
    refused(mount, tmp_path, str(path), "not RAM-backed", fstype)
    assert list(path.iterdir()) == [], "the refused mount wrote into the tier directory"


def test_tier_too_small(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    path = tier_guard / "small"
    with tu.tmpfs_at(path, "8M"):
        mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=None)
        refused(mount, tmp_path, str(path), "too small", "8.0 MiB", "64.0 MiB")
        # Same with mount_tmpfs = false: an existing mount is used, never replaced.
        mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=False)
        refused(mount, tmp_path, "too small")
        assert [m[0] for m in tu.mounts_under(path)] == [str(path.resolve())]


@pytest.mark.slow
def test_tierfs_mounts_its_own_tmpfs(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    path = tier_guard / "deep" / "ram0"
    mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=True)
    mount.start()
    found = tu.mounts_under(path)
    assert len(found) == 1, found
    point, fstype, options = found[0]
    assert (point, fstype) == (str(path.resolve()), "tmpfs")
    assert "size=65536k" in options.split(","), options
    assert sorted(p.name for p in path.iterdir()) == [".tmp", "hot"]
    report = tu.status(mount.state_dir)
    row = tu.tier_row(report, "ram0")
    assert (row["size"], row["used"], row["mounted"]) == (64 * MiB, 0, True)

    # It is usable: a promotion lands on it.
    model = "m/a.safetensors"
    assert tu.promote_wait(mount.state_dir, model)["state"] == "done"
    assert (path / "hot" / "c" / model).is_file()
    # A restart finds the tmpfs already mounted and uses it, rather than stacking another.
    assert mount.stop() == 0
    mount.start()
    assert len(tu.mounts_under(path)) == 1
    assert tu.model_of(tu.status(mount.state_dir), model)["state"] == "hot"


def test_tier_path_is_a_file(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    path = tier_guard / "a-file"
    path.write_bytes(b"not a directory")
    for mount_tmpfs in (True, False):
        mount = config_with(mount_factory, cold_store, path, "64M", mount_tmpfs=mount_tmpfs)
        refused(mount, tmp_path, str(path))
    assert path.read_bytes() == b"not a directory"


@pytest.mark.parametrize("where", ["inside-cold", "holds-cold", "inside-mountpoint"])
def test_tier_overlapping_cold_store_or_mountpoint(
    tier_guard: Path, mount_factory: MountFactory, tmp_path: Path, where: str
) -> None:
    # A tier inside a cold store would write into it (tierfs never does) and show its
    # hot copies in the namespace; one holding a cold store would hide it under a
    # tmpfs; one inside the mountpoint would be hidden by the mount itself.
    cold = tmp_path / "outer" / "cold"
    cold.mkdir(parents=True)
    mountpoint = tmp_path / "tierfs-m" / "mnt"
    path = {
        "inside-cold": cold / "ram0",
        "holds-cold": cold.parent,
        "inside-mountpoint": mountpoint / "ram0",
    }[where]
    mount = config_with(mount_factory, cold, path, "64M", mount_tmpfs=True)
    assert mount.mountpoint == mountpoint
    existed = path.exists()
    cold_before = sorted(p.name for p in cold.iterdir())
    try:
        result = tu.cli(mount.config, "mount", "--foreground", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a tier that overlaps ({where}) was mounted")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "'ram0'" in lines[0] and "overlaps" in lines[0], lines
    assert not tu.mounts_under(tmp_path)
    assert path.exists() == existed
    assert sorted(p.name for p in cold.iterdir()) == cold_before
    # `config check` says the same.
    check = tu.cli(mount.config, "config", "check")
    assert check.returncode == 2 and "overlaps" in check.stderr


def test_refused_start_unmounts_the_tmpfs_it_mounted_for_an_earlier_tier(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    cold_model(cold_store)
    fresh = tier_guard / "ram0"  # tierfs mounts a tmpfs here
    on_disk = tmp_path / "on-disk"  # then refuses this one: not RAM-backed
    on_disk.mkdir()
    extra = tu.tier_toml("ram0", fresh, "64M", mount_tmpfs=True) + tu.tier_toml(
        "ram1", on_disk, "64M", rank=1, mount_tmpfs=False
    )
    mount = mount_factory([("c", cold_store)], extra=extra, start=False)
    result = tu.cli(mount.config, "mount", "--foreground", timeout=30)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("tierfs:")]
    assert len(errors) == 1 and "'ram1'" in errors[0] and "not RAM-backed" in errors[0], errors
    assert not tu.mounts_under(tmp_path), "the refused start left a mount behind"


def test_refused_mountpoint_unmounts_the_fresh_tier_tmpfs_but_keeps_an_existing_one(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    fresh = tier_guard / "ram0"
    mount = config_with(mount_factory, cold_store, fresh, "64M", mount_tmpfs=True)
    mount.mountpoint.rmdir()
    result = tu.cli(mount.config, "mount", "--foreground", timeout=30)
    assert result.returncode != 0 and "does not exist" in result.stderr, result.stderr
    assert not tu.mounts_under(tmp_path), "the refused start left its tmpfs mounted"

    # A tmpfs that was there before the start (a restart's hot copies) is never taken away.
    with tu.tmpfs_at(fresh, "64M"):
        (fresh / "keep").write_bytes(b"hot")
        result = tu.cli(mount.config, "mount", "--foreground", timeout=30)
        assert result.returncode != 0 and "does not exist" in result.stderr
        assert [m[0] for m in tu.mounts_under(fresh)] == [str(fresh.resolve())]
        assert (fresh / "keep").read_bytes() == b"hot"


def test_offline_fsck_leaves_no_tmpfs_it_mounted_behind(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    fresh = tier_guard / "ram0"
    mount = config_with(mount_factory, cold_store, fresh, "64M", mount_tmpfs=True)
    result = tu.cli(mount.config, "fsck", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "fsck: clean" in result.stdout
    assert not tu.mounts_under(tmp_path), "offline fsck left its tmpfs mounted"


NOBODY = 65534


@pytest.mark.parametrize("planted", ["tier_root", "hot_dir", "hot_copy", "mode"])
def test_a_tier_another_user_owns_or_can_write_is_refused(
    planted: str, tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    # A shared 1777 tmpfs, like /dev/shm, where any user may have made the tier first.
    with tu.tmpfs_at(tier_guard / "shm", "64M", mode="1777") as shm:
        path = shm / "ram0"
        path.mkdir(mode=0o700)
        needle = "belongs to uid 65534"
        if planted == "tier_root":
            os.chown(path, NOBODY, NOBODY)
        elif planted == "hot_dir":
            (path / "hot").mkdir()
            os.chown(path / "hot", NOBODY, NOBODY)
        elif planted == "hot_copy":
            copy = path / "hot" / "c" / "m" / "a.safetensors"
            copy.parent.mkdir(parents=True)
            copy.write_bytes(b"evil" * 1024)
            os.chown(copy, NOBODY, NOBODY)
        else:
            os.chmod(path, 0o777)
            needle = "writable by other users (mode 0777)"
        mount = config_with(mount_factory, cold_store, path, "32M", mount_tmpfs=False)
        refused(mount, tmp_path, str(path), needle)


def test_hot_copies_are_private_whatever_mode_the_tier_directory_has(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    with tu.tmpfs_at(tier_guard / "shm", "64M", mode="0755") as shm:
        path = shm / "ram0"
        (path / "hot").mkdir(parents=True)
        os.chmod(path / "hot", 0o755)
        mount = config_with(mount_factory, cold_store, path, "32M", mount_tmpfs=False)
        mount.start()
        assert tu.promote_wait(mount.state_dir, "m/a.safetensors")["state"] == "done"
        for sub in ("hot", ".tmp"):
            assert stat.S_IMODE(os.stat(path / sub).st_mode) == 0o700, sub
        # Another user cannot reach the copy, whatever its own mode says.
        copy = path / "hot" / "c" / "m" / "a.safetensors"
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(copy)],
            capture_output=True,
            check=False,
        )
        assert probe.returncode != 0 and b"Permission denied" in probe.stderr, probe


def daemon_config(tier_guard: Path, cold_store: Path, tmp_path: Path) -> Config:
    """A config for a `Daemon` built in-process: one cold store, one 64 MiB tier."""
    (tmp_path / "mnt").mkdir()
    return config_from_dict(
        {
            "mountpoint": str(tmp_path / "mnt"),
            "state_dir": str(tmp_path / "state"),
            "cold": [{"name": "c", "path": str(cold_store)}],
            "tier": [{"name": "ram0", "path": str(tier_guard / "ram0"), "size": "64M"}],
        }
    )


def test_a_cold_store_gone_at_start_leaves_no_tier_tmpfs_and_no_lock_behind(
    tier_guard: Path, cold_store: Path, tmp_path: Path
) -> None:
    cold_model(cold_store)
    config = daemon_config(tier_guard, cold_store, tmp_path)
    # Valid when read, gone when the daemon builds its namespace.
    shutil.rmtree(cold_store)
    with pytest.raises(NamespaceError, match="cold store 'c'"):
        Daemon(config)
    assert not tu.mounts_under(tmp_path), "the refused start left its tier tmpfs mounted"
    StateDir(config.state_dir, "test").close()  # the lock was released


def test_a_start_refused_after_the_tiers_are_mounted_leaves_no_tier_tmpfs_behind(
    tier_guard: Path, cold_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cold_model(cold_store)
    config = daemon_config(tier_guard, cold_store, tmp_path)
    mounted: list[bool] = []

    def refuse(*args: object) -> None:
        # The tier tmpfs is mounted by now: the cleanup has something to undo.
        mounted.append(bool(tu.mounts_under(tmp_path)))
        raise TierError("refused after the tiers", path=str(tier_guard / "ram0"))

    monkeypatch.setattr(service, "Mover", refuse)
    with pytest.raises(TierError, match="refused after the tiers"):
        service.Daemon(config)
    assert mounted == [True]
    assert not tu.mounts_under(tmp_path), "the refused start left its tier tmpfs mounted"
    StateDir(config.state_dir, "test").close()  # the lock was released
