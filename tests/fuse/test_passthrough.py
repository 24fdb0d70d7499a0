"""FUSE passthrough on a real mount, against the daemon-served mode ("off") where it matters.

With passthrough the kernel reads an open file's backing copy itself: the daemon's read
counter stays at zero, and the FUSE inode caches nothing (the bytes are cached once, as
the backing file's pages). Bytes are checked with xxh3-128 against the cold files.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fuse import tierutil as tu
from tests.fuse.mounting import REPO_ROOT, Mount, MountFactory, write_config

MiB = tu.MiB
tier_guard = tu.tier_guard

pytestmark = pytest.mark.timeout(180)

MODEL = "m/big"
SHARD = f"{MODEL}/model-00001-of-00001.safetensors"
SIZE = 24 * MiB + 1234  # not a multiple of a page


def store(cold: Path) -> str:
    (cold / MODEL).mkdir(parents=True)
    (cold / MODEL / "config.json").write_text('{"model_type": "llama"}')
    return tu.write_random(cold / SHARD, SIZE, 7)


def tiered(mount_factory: MountFactory, tiers: Path, cold: Path, passthrough: str) -> Mount:
    extra = tu.tier_toml("ram0", tiers / "ram0", "128M")
    extra += tu.policy_toml(promote_on_open=False)
    return mount_factory([("c", cold)], extra=extra, passthrough=passthrough)


def read_chunks(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return tu.xxh(b"".join(iter(lambda: f.read(1 << 20), b"")))


def read_mmap(path: Path, flags: int) -> str:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as m:
        return tu.xxh(m[:])


def read_direct(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        size = os.fstat(fd).st_size
        buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
        out = bytearray()
        while len(out) < size:
            got = os.preadv(fd, [buf], len(out))
            if got == 0:
                break
            out += buf[:got]
        buf.close()
        return tu.xxh(bytes(out))
    finally:
        os.close(fd)


READERS = {
    "read": read_chunks,
    "mmap-shared": lambda p: read_mmap(p, mmap.MAP_SHARED),
    "mmap-private": lambda p: read_mmap(p, mmap.MAP_PRIVATE),
    "o-direct": read_direct,
}


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "wb", "evicted", "rev")]


def cached_bytes(fd: int) -> int:
    """Bytes of the file behind `fd` in its own page cache (cachestat(2), Linux 6.5)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rng, out = _CachestatRange(0, 0), _Cachestat()
    if libc.syscall(451, fd, ctypes.byref(rng), ctypes.byref(out), 0) != 0:
        raise OSError(ctypes.get_errno(), "cachestat failed")
    return int(out.cache) * mmap.PAGESIZE


@pytest.mark.parametrize("passthrough", ["require", "off"])
def test_bytes_through_every_access_path_hot_and_cold(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, passthrough: str
) -> None:
    want = store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, passthrough)
    path = mount.mountpoint / SHARD
    for where in ("cold", "hot"):
        if where == "hot":
            assert tu.promote_wait(mount.state_dir, MODEL)["state"] == "done"
            assert os.getxattr(path, "user.tierfs.tier") == b"ram0"
        for name, reader in READERS.items():
            tu.drop_cache(path)
            assert reader(path) == want, (where, name)
    stats = mount.stats()
    assert stats["opens"] >= 2 * len(READERS)
    if passthrough == "require":
        assert stats["read_mode"] == "passthrough"
        assert stats["passthrough_opens"] == stats["opens"] and stats["daemon_opens"] == 0
        assert stats["read_bytes"] == 0, "the daemon served reads of passthrough files"
    else:
        assert stats["read_mode"] == "daemon"
        assert stats["read_mode_reason"] == '[read] passthrough = "off" in the config'
        assert stats["passthrough_opens"] == 0
        assert stats["read_bytes"] >= SIZE


def test_opens_of_one_inode_share_the_backing_they_started_with(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    """The kernel allows one backing file per inode: an open made after a promotion, while
    a handle from before it is still open, shares the cold backing (a second one would
    fail with EIO); once both close, new opens get the hot copy."""
    want = store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, "require")
    path = mount.mountpoint / SHARD
    with open(path, "rb", buffering=0) as first:
        head = first.read(MiB)
        assert tu.promote_wait(mount.state_dir, MODEL)["state"] == "done"
        empty = tmp_path / "empty"
        empty.mkdir()
        with tu.bind_over(empty, cold_store):
            # The cold file is out of the daemon's reach now, yet both handles read it:
            # the kernel holds the backing file registered by the first open.
            with open(path, "rb", buffering=0) as second:
                assert tu.xxh(second.read()) == want
            assert tu.xxh(head + first.read()) == want
    with tu.bind_over(tmp_path / "empty", cold_store):
        # All handles closed: the next open chooses again, and gets the hot copy.
        assert read_chunks(path) == want
        assert read_mmap(path, mmap.MAP_SHARED) == want
    assert mount.stats()["daemon_opens"] == 0


def test_demotion_under_an_open_mapping(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    want = store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, "require")
    path = mount.mountpoint / SHARD
    assert tu.promote_wait(mount.state_dir, MODEL)["state"] == "done"
    hot = Path(os.fsdecode(os.getxattr(path, "user.tierfs.backing")))
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        # Only the mapping is left: the demotion neither waits for it nor breaks it.
        tu.cli_ok(mount.config, "demote", MODEL)
        assert not hot.exists()
        report = tu.status(mount.state_dir)
        assert tu.model_of(report, MODEL)["state"] == "cold"
        assert tu.tier_row(report, "ram0")["used"] == 0
        assert tu.xxh(mapping[:]) == want
        assert read_chunks(path) == want  # a new open, from cold
    finally:
        mapping.close()


@pytest.mark.parametrize("passthrough", ["require", "off"])
def test_a_hot_file_read_through_the_mount_is_cached_once(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path, passthrough: str
) -> None:
    """Daemon-served reads fill the FUSE inode's own page cache, a second copy of the
    tmpfs pages; passthrough reads fill none."""
    want = store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, passthrough)
    path = mount.mountpoint / SHARD
    assert tu.promote_wait(mount.state_dir, MODEL)["state"] == "done"
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert tu.xxh(b"".join(iter(lambda: f.read(1 << 20), b""))) == want
        cached = cached_bytes(f.fileno())
    if passthrough == "require":
        assert cached <= SIZE * 0.05, cached
    else:
        assert cached >= SIZE * 0.9, cached


def test_status_and_metrics_show_the_read_mode(
    tier_guard: Path, mount_factory: MountFactory, cold_store: Path
) -> None:
    store(cold_store)
    mount = tiered(mount_factory, tier_guard, cold_store, "auto")
    assert read_chunks(mount.mountpoint / SHARD)
    reads = tu.status(mount.state_dir)["reads"]
    assert reads["read_mode"] == "passthrough"
    assert reads["passthrough_opens"] == 1 and reads["daemon_opens"] == 0
    transport = httpx.HTTPTransport(uds=str(mount.state_dir / "control.sock"))
    with httpx.Client(transport=transport, base_url="http://tierfs", timeout=30) as http:
        text = http.get("/metrics").text
    assert 'tierfs_read_mode{mode="passthrough"} 1.0' in text
    assert 'tierfs_read_mode{mode="daemon"} 0.0' in text
    assert 'tierfs_opens_by_mode_total{mode="passthrough"} 1.0' in text
    shown = tu.cli_ok(mount.config, "status").stdout
    assert "read mode: passthrough" in shown


def test_require_refuses_to_mount_without_cap_sys_admin(
    mount_factory: MountFactory, cold_store: Path, tmp_path: Path
) -> None:
    store(cold_store)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = write_config(
        tmp_path / "config.toml",
        mountpoint=mountpoint,
        state_dir=tmp_path / "state",
        cold=[("c", cold_store)],
        passthrough="require",
    )
    result = subprocess.run(
        [
            *("setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"),
            *(sys.executable, "-m", "tierfs", "mount", "--foreground", "-c", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "require" in ln]
    assert "CAP_SYS_ADMIN" in line and str(mountpoint) in line, line
    assert tu.mounts_under(mountpoint) == []


def test_per_file_refusal_falls_back_for_that_file_alone(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    """A cold store on another passthrough FUSE mount: the kernel refuses its files as
    backing (ELOOP), so the daemon serves them, and the mount stays in passthrough mode."""
    want = store(cold_store)
    lower = mount_factory([("c", cold_store)], name="lower", passthrough="require")
    upper = mount_factory([("l", lower.mountpoint)], name="upper", passthrough="require")
    assert read_chunks(upper.mountpoint / SHARD) == want
    assert read_mmap(upper.mountpoint / SHARD, mmap.MAP_SHARED) == want
    stats = upper.stats()
    assert stats["read_mode"] == "passthrough"
    assert stats["daemon_opens"] == 2 and stats["passthrough_opens"] == 0
    assert stats["read_bytes"] >= SIZE
    assert "passthrough refused" in upper.log_text() and os.strerror(errno.ELOOP) in (
        upper.log_text()
    )
    # The lower mount itself serves by passthrough.
    assert lower.stats()["passthrough_opens"] >= 2


_MAP_THEN_TOUCH = """
import mmap, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
print("mapped", flush=True)
sys.stdin.readline()
print(m[int(sys.argv[2])], flush=True)
"""


def test_a_cold_file_truncated_under_an_open_handle_never_reads_as_zeros(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    """The passthrough side of "no invented zeros": the kernel reads the cold file itself,
    so a read past its new end is a short read (EOF), and a mapping past it faults."""
    store(cold_store)
    cold = cold_store / SHARD
    original = cold.read_bytes()
    mount = mount_factory([("c", cold_store)], passthrough="require")
    path = mount.mountpoint / SHARD
    keep = 2 * MiB
    mapper = subprocess.Popen(
        [sys.executable, "-c", _MAP_THEN_TOUCH, str(path), str(keep + 4096)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert mapper.stdin is not None and mapper.stdout is not None
    assert mapper.stdout.readline().strip() == "mapped"
    with open(path, "rb", buffering=0) as f:
        head = f.read(MiB)
        os.truncate(cold, keep)
        rest = b"".join(iter(lambda: f.read(1 << 20), b""))
    mapper.stdin.write("go\n")
    mapper.stdin.flush()
    out = mapper.stdout.read()
    assert mapper.wait(60) == -7, out  # SIGBUS: the page past the end is not a zero
    assert head + rest == original[:keep]
    assert mount.stats()["passthrough_opens"] >= 2
