"""A block-device tier: what a remote RAM disk exported over NVMe-oF looks like once it is
mounted here.  This kernel has no NVMe-oF, so a loop device holding ext4 stands in for the
block device; everything above the block layer is the real thing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import loader
from loader.pagecache import page_cache_fraction
from tests.fuse import tierutil as tu
from tests.fuse.mounting import MountFactory, file_hash
from tests.fuse.test_loader_fuse_bypass import MODEL, write_checkpoint
from tests.loader_testutil import digest

MiB = tu.MiB
tier_guard = tu.tier_guard

pytestmark = pytest.mark.timeout(180)


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def block_tier(tier_guard: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An ext4 file system on a loop device, mounted at a tier path; yields (path, device)."""
    image = tmp_path / "remote-ram.img"
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
    device = _run("losetup", "--find", "--show", str(image))
    path = tier_guard / "remote0"
    try:
        _run("mkfs.ext4", "-q", "-F", device)
        path.mkdir()
        _run("mount", device, str(path))
        yield path, device
    finally:
        tu.unmount_all_under(tier_guard)
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def test_block_tier_holds_flushed_verified_copies_that_the_loader_reads_directly(
    block_tier: tuple[Path, str], mount_factory: MountFactory, cold_store: Path
) -> None:
    tier, device = block_tier
    expected = write_checkpoint(cold_store)
    shards = sorted(p.name for p in (cold_store / MODEL).glob("*.safetensors"))
    cold_hashes = {name: file_hash(cold_store / MODEL / name) for name in shards}
    extra = tu.tier_toml("remote0", tier, "128M", kind="remote")
    extra += tu.policy_toml(promote_on_open=False)
    mount = mount_factory([("disk", cold_store)], extra=extra)

    assert tu.promote_wait(mount.state_dir, MODEL)["state"] == "done"
    report = tu.status(mount.state_dir)
    assert tu.model_of(report, MODEL)["state"] == "hot"
    assert tu.tier_row(report, "remote0")["used"] > 0
    for name in shards:
        through = mount.mountpoint / MODEL / name
        backing = Path(os.fsdecode(os.getxattr(through, "user.tierfs.backing")))
        assert os.getxattr(through, "user.tierfs.tier") == b"remote0"
        assert backing.is_relative_to(tier), backing
        # Flushed to the device and dropped from local RAM: dirty pages would have stayed.
        fd = os.open(backing, os.O_RDONLY)
        try:
            assert page_cache_fraction(fd, os.fstat(fd).st_size) < 0.05
        finally:
            os.close(fd)

    # The loader reads the block tier's copies itself, with O_DIRECT (they are not in the
    # page cache), around FUSE.
    before = mount.stats()["read_bytes"]
    with loader.safe_open(mount.mountpoint / MODEL, verify=True) as f:
        assert set(f.backends.values()) == {"direct"}, f.backends
        assert all(Path(of.rf.read_path).is_relative_to(tier) for of in f.files)
        got = {k: digest(v) for k, v in f.tensors()}
    assert got == expected
    assert mount.stats()["read_bytes"] == before
    for name in shards:
        assert file_hash(tier / "hot" / "disk" / MODEL / name) == cold_hashes[name]
    inodes = {p: p.stat().st_ino for p in tier.rglob("*.safetensors")}

    # The copies are on the device, not only in this host's memory: remount the file
    # system (a fresh page cache) and restart tierfs, which adopts them without copying.
    assert mount.stop() == 0
    _run("umount", str(tier))
    _run("mount", device, str(tier))
    mount.start()
    report = tu.status(mount.state_dir)
    assert tu.model_of(report, MODEL)["state"] == "hot"
    for name in shards:
        assert tu.read_through(mount.mountpoint / MODEL / name) == cold_hashes[name]
    assert {p: p.stat().st_ino for p in tier.rglob("*.safetensors")} == inodes, "copied again"
