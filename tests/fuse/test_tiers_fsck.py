"""fsck and recovery against real damage: changed cold files, corrupt hot copies, stray
files on a tier, and a catalog from a newer tierfs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.fuse.crashutil import (
    HF_MODEL,
    TIER,
    MiB,
    TierDirs,
    assert_catalog_consistent,
    assert_fsck_clean,
    assert_serves_cold_bytes,
    build_hf_model,
    cli,
    control,
    file_hash,
    files_under,
    manual_tier_toml,
    model_state,
    mounted_bytes,
    read_catalog,
    restart,
    wait_for_log,
    xxh,
)
from tests.fuse.mounting import REPO_ROOT, Mount, MountFactory, wait_for
from tests.fuse.tierutil import promote_wait, write_random
from tierfs.mountinfo import mount_entry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LONE = "lone/a.gguf"
Rig = Callable[[], tuple[Mount, dict[str, str], Path]]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[TierDirs]:
    dirs = TierDirs(tmp_path)
    yield dirs
    dirs.cleanup()


def _age(path: Path, seconds: float = 3600) -> None:
    """Backdate a directory, so only a real change to it can make tierfs rescan it."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def rig(tiers: TierDirs, mount_factory: MountFactory, cold_store: Path) -> Rig:
    """A mount over a lone GGUF and an HF model, both promoted; (mount, hashes, tier)."""

    def make() -> tuple[Mount, dict[str, str], Path]:
        hashes = build_hf_model(cold_store)
        hashes[LONE] = write_random(cold_store / LONE, 2 * MiB + 5, seed=99)
        for d in (cold_store / "lone", cold_store / HF_MODEL, cold_store / "hf", cold_store):
            _age(d)
        tier = tiers.new()
        mount = mount_factory([("cold", cold_store)], extra=manual_tier_toml(tier))
        for model in (LONE, HF_MODEL):
            assert promote_wait(mount.state_dir, model)["state"] == "done"
        served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
        assert set(served.values()) == {TIER}
        return mount, hashes, tier

    return make


def _hot_path(tier: Path, relpath: str) -> Path:
    return tier / "hot" / "cold" / relpath


def _rewrite(cold: Path, relpath: str, how: str, size: int, seed: int) -> str:
    """Change a cold file underneath: new bytes, new size, new mtime.

    The ``forged_*`` ways keep the old size and mtime (``touch -r``, as ``rsync -a`` does):
    only the inode or the ctime tell.
    """
    path = cold / relpath
    old = path.stat()
    forged = how.startswith("forged_")
    if forged:
        size = old.st_size
    if how.endswith("in_place"):
        digest = write_random(path, size, seed)  # same inode; the directory is untouched
    else:
        digest = write_random(path.with_name(path.name + ".new"), size, seed)
        os.replace(path.with_name(path.name + ".new"), path)
    if forged:
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    if how.endswith("in_place"):
        _age(path.parent)
    new = path.stat()
    if forged:
        assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    else:
        assert (new.st_size, new.st_mtime_ns) != (old.st_size, old.st_mtime_ns)
    return digest


def _assert_dropped(mount: Mount, cold: Path, tier: Path, relpath: str, digest: str) -> None:
    """The stale hot copy is gone and the new cold bytes are served."""
    data = mounted_bytes(mount.mountpoint, relpath)
    assert xxh(data) == digest, f"read {len(data)} bytes that are not the new cold content"
    assert os.stat(mount.mountpoint / relpath).st_size == len(data)
    assert os.getxattr(mount.mountpoint / relpath, "user.tierfs.tier") == b"cold"
    backing = os.fsdecode(os.getxattr(mount.mountpoint / relpath, "user.tierfs.backing"))
    assert backing == str(cold / relpath)
    assert not _hot_path(tier, relpath).exists(), "the stale hot copy is still on the tier"
    files, replicas = read_catalog(mount.state_dir)
    record = next(f for f in files.values() if f.relpath == relpath)
    assert record.size == len(data)
    assert record.xxh3 in (None, digest), "the catalog still vouches for the old bytes"
    assert not [r for r in replicas if r.file_id == record.file_id]


@pytest.mark.parametrize("how", ["in_place", "replaced", "forged_in_place", "forged_replaced"])
def test_cold_file_changed_while_mounted_drops_the_hot_copy(
    how: str, rig: Rig, cold_store: Path
) -> None:
    mount, hashes, tier = rig()
    digest = _rewrite(cold_store, LONE, how, 3 * MiB + 1, seed=5)
    _assert_dropped(mount, cold_store, tier, LONE, digest)
    # The other model is untouched and still hot.
    hashes[LONE] = digest
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert served[LONE] == "cold"
    assert {t for r, t in served.items() if r != LONE} == {TIER}
    assert_catalog_consistent(mount.state_dir, tier)
    assert_fsck_clean(mount.config)


@pytest.mark.parametrize("how", ["in_place", "forged_replaced"])
@pytest.mark.parametrize("repair", ["remount", "offline_fsck"])
def test_cold_file_changed_while_unmounted_drops_the_hot_copy(
    repair: str, how: str, rig: Rig, cold_store: Path
) -> None:
    mount, hashes, tier = rig()
    assert mount.stop() == 0
    digest = _rewrite(cold_store, LONE, how, MiB - 3, seed=6)
    if repair == "offline_fsck":
        result = cli(mount.config, "fsck")
        assert result.returncode == 0, result.stderr
        assert f"{_hot_path(tier, LONE)}: cold file changed underneath" in result.stdout
        assert not _hot_path(tier, LONE).exists()
    restart(mount)
    _assert_dropped(mount, cold_store, tier, LONE, digest)
    hashes[LONE] = digest
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert {t for r, t in served.items() if r != LONE} == {TIER}
    assert_catalog_consistent(mount.state_dir, tier)
    assert_fsck_clean(mount.config)
    # And it can be promoted again, with its new bytes.
    assert promote_wait(mount.state_dir, LONE)["state"] == "done"
    assert file_hash(_hot_path(tier, LONE)) == digest
    assert os.getxattr(mount.mountpoint / LONE, "user.tierfs.xxh3").decode() == digest
    assert xxh(mounted_bytes(mount.mountpoint, LONE)) == digest


def _flip_byte(path: Path, offset: int) -> None:
    mode = path.stat().st_mode
    assert not mode & 0o222, "hot copies are read-only"
    with open(path, "r+b") as f:  # root writes through the 0444 mode
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
def test_corrupt_hot_copy_is_caught_by_deep_fsck_and_repaired(
    online: bool, rig: Rig, cold_store: Path
) -> None:
    mount, hashes, tier = rig()
    victim_rel = f"{HF_MODEL}/model-00001-of-00002.safetensors"
    victim = _hot_path(tier, victim_rel)
    if not online:
        assert mount.stop() == 0
    _flip_byte(victim, 1 * MiB + 17)
    assert file_hash(victim) != hashes[victim_rel]

    if online:  # a shallow check looks at sizes only: it cannot see this
        with control(mount) as client:
            assert client.fsck(False)["clean"]
    result = cli(mount.config, "fsck", "--deep")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if str(victim) in line]
    assert len(lines) == 1 and "corrupt" in lines[0], result.stdout
    assert "1 problem(s) found" in result.stdout

    assert file_hash(victim) == hashes[victim_rel], "the hot copy was not repaired"
    assert not victim.stat().st_mode & 0o222
    assert "re-hashed" in assert_fsck_clean(mount.config, "--deep")
    if not online:
        restart(mount)
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {TIER}, served
    assert_catalog_consistent(mount.state_dir, tier)


def test_deep_fsck_repair_reaches_readers_who_saw_the_corruption(
    rig: Rig, cold_store: Path
) -> None:
    """Bytes read from a corrupt copy before the repair must not outlive it in the cache."""
    mount, hashes, tier = rig()
    victim = _hot_path(tier, LONE)
    _flip_byte(victim, 4096 * 3 + 1)
    # The mount serves what the hot copy holds; reading it now caches the bad bytes.
    # Drop what earlier reads cached, so this read goes to the corrupt copy.
    with open(mount.mountpoint / LONE, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    bad = xxh(mounted_bytes(mount.mountpoint, LONE))
    assert bad != hashes[LONE]
    with control(mount) as client:
        report = client.fsck(True)
    assert [f["path"] for f in report["findings"]] == [str(victim)], report
    assert "corrupt" in report["findings"][0]["problem"]
    assert file_hash(victim) == hashes[LONE]
    after = xxh(mounted_bytes(mount.mountpoint, LONE))
    assert after != bad, "the mount still serves the corrupt bytes after the repair"
    assert after == hashes[LONE]


def test_untracked_file_on_a_tier_is_removed_and_reported(rig: Rig, cold_store: Path) -> None:
    mount, hashes, tier = rig()
    strays = [
        _hot_path(tier, "lone/stray.gguf"),
        tier / "hot" / "cold" / "nowhere" / "deep" / "x.bin",
    ]
    for i, stray in enumerate(strays):
        write_random(stray, 4096 + i, seed=i)
    result = cli(mount.config, "fsck")
    assert result.returncode == 0, result.stderr
    for stray in strays:
        assert f"{stray}: file on tier unknown to the catalog (removed)" in result.stdout
        assert not stray.exists()
    assert f"{len(strays)} problem(s) found" in result.stdout
    with control(mount) as client:
        assert client.fsck(False)["clean"]
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {TIER}
    assert_catalog_consistent(mount.state_dir, tier)


def test_untracked_file_is_removed_at_mount(rig: Rig, cold_store: Path) -> None:
    mount, _hashes, tier = rig()
    assert mount.stop() == 0
    stray = _hot_path(tier, "lone/stray.gguf")
    write_random(stray, 10_000, seed=3)
    restart(mount)
    assert not stray.exists()
    assert f"fsck: {stray}: file on tier unknown to the catalog (removed)" in mount.log_text()
    assert_catalog_consistent(mount.state_dir, tier)


def test_newer_catalog_schema_is_refused_with_one_line(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    write_random(cold_store / LONE, 4096, seed=1)
    tier = tiers.new()
    mount = mount_factory([("cold", cold_store)], extra=manual_tier_toml(tier))
    assert mount.stop() == 0
    with closing(sqlite3.connect(mount.state_dir / "catalog.sqlite")) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        db.commit()

    result = subprocess.run(
        [sys.executable, "-m", "tierfs", "mount", "--foreground", "-c", str(mount.config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tierfs: "), result.stderr
    assert "schema version 999" in last and "newer" in last, last
    errors = [line for line in result.stderr.splitlines() if "999" in line]
    assert errors == [last], result.stderr
    assert mount_entry(mount.mountpoint) is None, "a mount was left behind"

    # The offline commands refuse it the same way, and leave it as it was.
    for args in (("fsck",), ("status",)):
        other = cli(mount.config, *args)
        assert other.returncode == 1, (args, other.stdout, other.stderr)
        assert "Traceback" not in other.stderr
        assert "schema version 999" in other.stderr.strip().splitlines()[-1]
    with closing(sqlite3.connect(mount.state_dir / "catalog.sqlite")) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == "999"
    assert files_under(tier / "hot") == []


def test_online_fsck_leaves_copies_that_began_during_it_alone(
    tiers: TierDirs, mount_factory: MountFactory, cold_store: Path
) -> None:
    """A promotion that starts while an online fsck is under way is the daemon's own work,
    not a crash's leftover (the soak caught fsck removing such a copy)."""
    hashes = build_hf_model(cold_store)
    tier = tiers.new()
    pauses = {"TIERFS_FAULT_PAUSE": "fsck_checking,copy_renamed", "TIERFS_FAULT_PAUSE_S": "3"}
    mount = mount_factory([("cold", cold_store)], extra=manual_tier_toml(tier), env=pauses)
    report: dict[str, object] = {}

    def online_fsck() -> None:
        with control(mount) as client:
            report.update(client.fsck(False))

    fsck = threading.Thread(target=online_fsck)
    fsck.start()
    wait_for_log(mount, "fault point fsck_checking reached")
    with control(mount) as client:
        client.promote(HF_MODEL, None)
    # A copy is renamed into place, not yet accepted, when the paused fsck reads the catalog.
    wait_for_log(mount, "fault point copy_renamed reached")
    fsck.join(timeout=60)
    assert not fsck.is_alive()
    assert report["findings"] == [], report

    wait_for(lambda: model_state(mount, HF_MODEL)["state"] == "hot", 60, what="the promotion")
    served = assert_serves_cold_bytes(mount, cold_store, hashes, tier)
    assert set(served.values()) == {TIER}, served
    assert_catalog_consistent(mount.state_dir, tier)
    assert mount.stop() == 0
    assert_fsck_clean(mount.config)
