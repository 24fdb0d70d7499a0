"""What a real mount presents: a cold store that changes under it, merged stores, stable
inode numbers, the readahead of its bdi, allow_other and permissions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.lifeutil import (
    mounted,
    payload,
    populate,
    super_options,
    tierfs_cli,
    write_file,
)
from tests.fuse.mounting import Mount, MountFactory, wait_for, write_config

pytestmark = pytest.mark.timeout(180)


# -- a cold store that changes under the mount ------------------------------------------------


def test_files_and_dirs_added_to_cold_store_appear_without_remount(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    populate(cold_store)
    m = mount_factory([("c", cold_store)])
    mnt = m.mountpoint
    # Look first, so the daemon has scanned and the kernel has asked for the new names.
    assert sorted(os.listdir(mnt / "models")) == ["a", "b.gguf"]
    assert not (mnt / "models" / "new.gguf").exists()
    assert not (mnt / "fresh").exists()

    write_file(cold_store / "models" / "new.gguf", payload("new"))
    write_file(cold_store / "fresh" / "deep" / "w.safetensors", payload("deep", 500_000))
    write_file(cold_store / "models" / "a" / "shard2.safetensors", payload("shard2"))

    # Lookup of the new name, before any listing.
    assert (mnt / "models" / "new.gguf").read_bytes() == payload("new")
    assert (mnt / "fresh" / "deep" / "w.safetensors").read_bytes() == payload("deep", 500_000)
    # And listings of the changed directories.
    assert sorted(os.listdir(mnt / "models")) == ["a", "b.gguf", "new.gguf"]
    assert "fresh" in os.listdir(mnt)
    assert sorted(os.listdir(mnt / "models" / "a")) == [
        "config.json",
        "shard2.safetensors",
        "weights.safetensors",
    ]
    assert (mnt / "models" / "a" / "shard2.safetensors").read_bytes() == payload("shard2")
    assert os.stat(mnt / "models" / "new.gguf").st_size == len(payload("new"))


def test_file_removed_from_cold_store_disappears_from_listing(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    populate(cold_store)
    m = mount_factory([("c", cold_store)])
    mnt = m.mountpoint
    assert sorted(os.listdir(mnt / "models")) == ["a", "b.gguf"]
    (cold_store / "models" / "b.gguf").unlink()
    assert sorted(os.listdir(mnt / "models")) == ["a"]
    with pytest.raises(FileNotFoundError):
        (mnt / "models" / "b.gguf").read_bytes()


def test_file_removed_from_cold_store_no_longer_resolves_by_name(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    """A name gone from the listing must not keep resolving from the kernel's dentry cache."""
    populate(cold_store)
    m = mount_factory([("c", cold_store)])
    mnt = m.mountpoint
    assert (mnt / "models" / "b.gguf").stat().st_size == 200_000
    (cold_store / "models" / "b.gguf").unlink()
    assert sorted(os.listdir(mnt / "models")) == ["a"]
    # The daemon may tell the kernel asynchronously; a moment is fine, 300 s is not.
    wait_for(lambda: not (mnt / "models" / "b.gguf").exists(), 3, what="b.gguf to stop resolving")


# -- merged stores ----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 16 MiB tmpfs: a cold store on a file system of its own."""
    target = tmp_path / "small-fs"
    target.mkdir()
    with mounted("tmpfs", target):
        yield target


def test_two_cold_stores_merge_and_first_wins_conflicts(
    mount_factory: MountFactory, small_tmpfs: Path, tmp_path: Path
) -> None:
    s1 = small_tmpfs / "store1"
    s2 = tmp_path / "store2"
    write_file(s1 / "shared" / "one.bin", payload("one"))
    write_file(s1 / "only1" / "x.bin", payload("x"))
    write_file(s1 / "clash.gguf", payload("clash-1", 100_000))
    write_file(s2 / "shared" / "two.bin", payload("two"))
    write_file(s2 / "only2" / "y.bin", payload("y"))
    write_file(s2 / "clash.gguf", payload("clash-2", 150_000))
    m = mount_factory([("first", s1), ("second", s2)])
    mnt = m.mountpoint

    assert sorted(os.listdir(mnt)) == ["clash.gguf", "only1", "only2", "shared"]
    assert sorted(os.listdir(mnt / "shared")) == ["one.bin", "two.bin"]
    assert (mnt / "shared" / "one.bin").read_bytes() == payload("one")
    assert (mnt / "shared" / "two.bin").read_bytes() == payload("two")
    assert (mnt / "only2" / "y.bin").read_bytes() == payload("y")
    assert (mnt / "clash.gguf").read_bytes() == payload("clash-1", 100_000)
    assert os.stat(mnt / "clash.gguf").st_size == 100_000
    backing = os.getxattr(mnt / "clash.gguf", "user.tierfs.backing").decode()
    assert backing == str(s1 / "clash.gguf")

    proc = tierfs_cli("status", "--json", "-c", str(m.config))
    assert proc.returncode == 0, proc.stderr
    conflicts = json.loads(proc.stdout)["conflicts"]
    assert conflicts == [{"relpath": "clash.gguf", "winner": "first", "losers": ["second"]}]


def test_statfs_sums_capacity_of_distinct_file_systems(
    mount_factory: MountFactory, small_tmpfs: Path, tmp_path: Path
) -> None:
    s1 = small_tmpfs / "store1"
    s2 = tmp_path / "store2"
    s3 = tmp_path / "store3"  # same file system as store2: must not count twice
    for s in (s1, s2, s3):
        write_file(s / f"{s.name}.bin", payload(s.name))
    m = mount_factory([("s1", s1), ("s2", s2), ("s3", s3)])
    assert os.stat(s2).st_dev == os.stat(s3).st_dev != os.stat(s1).st_dev

    got = os.statvfs(m.mountpoint)
    one, two = os.statvfs(s1), os.statvfs(s2)
    expected_total = one.f_blocks * one.f_frsize + two.f_blocks * two.f_frsize
    total = got.f_blocks * got.f_frsize
    assert abs(total - expected_total) <= 2 * 4096, (total, expected_total)
    assert one.f_blocks * one.f_frsize == 16 << 20
    expected_free = one.f_bavail * one.f_frsize + two.f_bavail * two.f_frsize
    # Free space moves while other processes write to the disk; allow a little drift.
    assert abs(got.f_bavail * got.f_frsize - expected_free) <= 64 << 20


# -- inode numbers ----------------------------------------------------------------------------


def drop_kernel_caches() -> None:
    """Forget cached dentries and inodes so the next stat asks the daemon again."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_inode_numbers_stay_stable_across_rescans(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    files = populate(cold_store)
    m = mount_factory([("c", cold_store)])
    mnt = m.mountpoint
    paths = ["models", "models/a", *files]
    first = {rel: os.lstat(mnt / rel).st_ino for rel in paths}
    assert len(set(first.values())) == len(paths)
    assert os.stat(mnt).st_ino == 1

    # Adding files changes the directories' mtimes, so the daemon rescans them.
    write_file(cold_store / "models" / "added.bin", payload("added"))
    write_file(cold_store / "added-top.bin", payload("added-top"))
    write_file(cold_store / "models" / "a" / "added.json", b"{}")
    listed = {e.name: e.inode() for e in os.scandir(mnt / "models")}
    assert "added.bin" in listed
    assert listed["a"] == first["models/a"]
    assert listed["b.gguf"] == first["models/b.gguf"]
    listed_a = {e.name: e.inode() for e in os.scandir(mnt / "models" / "a")}
    assert listed_a["weights.safetensors"] == first["models/a/weights.safetensors"]
    assert "added-top.bin" in os.listdir(mnt)

    drop_kernel_caches()
    again = {rel: os.lstat(mnt / rel).st_ino for rel in paths}
    assert again == first
    new_inode = os.lstat(mnt / "models" / "added.bin").st_ino
    assert new_inode not in first.values()


# -- readahead --------------------------------------------------------------------------------


def bdi_read_ahead_kb(mountpoint: Path) -> int:
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    return int(path.read_text())


@pytest.mark.parametrize(
    ("setting", "expected_kb"),
    [('[read]\nreadahead = "8M"\n', 8192), ("", 16384)],
    ids=["8M", "default-16M"],
)
def test_readahead_of_mount_bdi_is_raised_to_configured_value(
    mount_factory: MountFactory, cold_store: Path, setting: str, expected_kb: int
) -> None:
    populate(cold_store)
    m = mount_factory([("c", cold_store)], extra=setting)
    # The daemon sets it right after mounting; give it a moment.
    wait_for(
        lambda: bdi_read_ahead_kb(m.mountpoint) == expected_kb,
        5,
        what=f"read_ahead_kb == {expected_kb} (is {bdi_read_ahead_kb(m.mountpoint)})",
    )


# -- allow_other and permissions --------------------------------------------------------------


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700, root only)."""
    base = Path(tempfile.mkdtemp(prefix="tierfs-test-ao-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True,
        timeout=30,
        check=False,
    )


def mount_shared(base: Path, top_level: str) -> Mount:
    cold = base / "cold"
    write_file(cold / "public" / "open.bin", payload("open"), 0o644)
    write_file(cold / "public" / "secret.bin", payload("secret"), 0o600)
    cold.chmod(0o755)
    (cold / "public").chmod(0o755)
    mountpoint = base / "mnt"
    mountpoint.mkdir(mode=0o755)
    config = write_config(
        base / "config.toml", mountpoint=mountpoint, state_dir=base / "state", cold=[("c", cold)]
    )
    # Top-level keys must come before the first table.
    config.write_text(top_level + config.read_text())
    return Mount(config, mountpoint, base / "state", base / "tierfs.log").start()


@pytest.fixture
def shared_mounts() -> Iterator[list[Mount]]:
    mounts: list[Mount] = []
    yield mounts
    for mount in mounts:
        mount.cleanup()


def test_allow_other_lets_another_user_read_and_default_permissions_enforces_modes(
    shared_base: Path, shared_mounts: list[Mount]
) -> None:
    m = mount_shared(shared_base, "allow_other = true\n")
    shared_mounts.append(m)
    options = super_options(m.mountpoint)
    assert "allow_other" in options, options
    assert "default_permissions" in options, options

    ok = as_nobody("cat", str(m.mountpoint / "public" / "open.bin"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == payload("open")

    refused = as_nobody("cat", str(m.mountpoint / "public" / "secret.bin"))
    assert refused.returncode != 0
    assert b"Permission denied" in refused.stderr, refused.stderr  # EACCES
    # Root still reads it.
    assert (m.mountpoint / "public" / "secret.bin").read_bytes() == payload("secret")


def test_without_allow_other_another_user_is_refused(
    shared_base: Path, shared_mounts: list[Mount]
) -> None:
    m = mount_shared(shared_base, "")
    shared_mounts.append(m)
    options = super_options(m.mountpoint)
    assert "allow_other" not in options, options
    refused = as_nobody("cat", str(m.mountpoint / "public" / "open.bin"))
    assert refused.returncode != 0
    assert b"Permission denied" in refused.stderr, refused.stderr
