"""The life of a real mount: signals, a killed daemon, refusals, --daemon, a changing cold
store, merged stores, inode stability, readahead, allow_other and permissions."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from tests.fuse.mounting import Mount, MountFactory, file_hash, wait_for, write_config
from tierfs.daemon.mounting import is_tierfs, lazy_unmount
from tierfs.mountinfo import MountEntry, mount_entry, read_mounts

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 90

pytestmark = pytest.mark.timeout(180)


# -- helpers ----------------------------------------------------------------------------------


def tierfs_cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run this worktree's CLI in a subprocess."""
    # A wide terminal: line wrapping of piped output is tested in tests/integration/test_cli.py.
    env = {**os.environ, "COLUMNS": "500"}
    return subprocess.run(
        [sys.executable, "-m", "tierfs", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def payload(name: str, size: int = 300_000) -> bytes:
    """Deterministic, name-specific bytes that span several pages."""
    seed = xxhash.xxh3_128_digest(name.encode())
    return (seed * (size // len(seed) + 1))[:size]


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, str]]:
    out: dict[str, tuple[int, int, str]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            content = file_hash(path)
        elif stat.S_ISLNK(st.st_mode):
            content = "-> " + os.readlink(path)
        else:
            content = "dir"
        out[path.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns, content)
    return out


def populate(root: Path) -> dict[str, bytes]:
    files = {
        "top.bin": payload("top"),
        "models/a/weights.safetensors": payload("a-weights", 1_000_000),
        "models/a/config.json": b'{"model_type": "llama"}\n',
        "models/b.gguf": payload("b", 200_000),
    }
    for rel, data in files.items():
        write_file(root / rel, data)
    return files


def pid_gone(pid: int) -> bool:
    """True once `pid` exited (a zombie counts as gone: it serves nothing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "Z" in state.split()[1]


def super_options(mountpoint: Path) -> list[str]:
    """The options of the file system mounted on top at `mountpoint`."""
    entry = mount_entry(mountpoint)
    assert entry is not None, f"nothing is mounted at {mountpoint}"
    return entry.super_options.split(",")


def mounts_at(mountpoint: Path) -> list[MountEntry]:
    """Every mount whose mount point is exactly `mountpoint` (mounts stack)."""
    return [e for e in read_mounts() if e.mountpoint == mountpoint]


@contextlib.contextmanager
def mounted(kind: str, target: Path, source: Path | None = None) -> Iterator[None]:
    """Mount a tmpfs (or bind-mount `source`) at `target`; always unmount afterwards."""
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=16m", "tierfs-test", str(target)]
    else:
        assert source is not None
        cmd = ["mount", "--bind", str(source), str(target)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)


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
