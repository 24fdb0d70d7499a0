"""tierfs mount detection and storage profiling.

A file on a tierfs mount answers ``user.tierfs.backing`` with the absolute path of the
complete copy that serves new opens.  The loader reads that copy directly so that bulk bytes
never pass through FUSE, and picks the backend by the file system the copy lives on.

``getxattr`` and ``fs_type`` are module-level functions so tests can patch them without a
mount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from dataclasses import dataclass

from tierfs.mountinfo import containing_mount
from tierfs.xattrs import XATTR_BACKING, XATTR_TIER, XATTR_XXH3

log = logging.getLogger(__name__)


# statfs f_type magic numbers (linux/magic.h and friends).
_FS_MAGIC: dict[int, str] = {
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x794C7630: "overlay",
    0x2FC12FC1: "zfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0xF2F52010: "f2fs",
}
MEMORY_FS = frozenset({"tmpfs", "ramfs"})
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb2", "smb3", "lustre", "gpfs", "ceph", "afs"})

_warned_lock = threading.Lock()
_warned: set[str] = set()


def getxattr(path: str, name: str) -> bytes | None:
    """Read an extended attribute; ``None`` when the file or file system does not have it."""
    try:
        return os.getxattr(path, name)
    except OSError as e:
        if e.errno in (
            errno.ENODATA,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.ENOENT,
            errno.EACCES,
            errno.EPERM,
            errno.E2BIG,
            errno.ERANGE,
        ):
            return None
        raise


class _StatFs(ctypes.Structure):
    # Only f_type is used; the struct is padded generously so the kernel never writes past it.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - every Linux has a libc
    _libc = None


def _statfs_type(path: str) -> str | None:
    if _libc is None:
        return None
    buf = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    magic = buf.f_type & 0xFFFFFFFF
    return _FS_MAGIC.get(magic, f"0x{magic:x}")


def _mountinfo_type(path: str) -> str | None:
    try:
        entry = containing_mount(path)
    except OSError:
        return None
    if entry is None:
        return None
    return "fuse" if entry.fstype.startswith("fuse") else entry.fstype


def fs_type(path: str) -> str:
    """Name of the file system holding ``path`` (``tmpfs``, ``ext4``, ``nfs``, ``fuse``...)."""
    return _statfs_type(path) or _mountinfo_type(path) or "unknown"


def mount_root(path: str) -> str:
    """Mount point that contains ``path``, from /proc/self/mountinfo."""
    entry = containing_mount(path)
    return str(entry.mountpoint) if entry is not None else "/"


@dataclass
class ResolvedFile:
    """Where the bytes of one requested file actually come from.

    ``fd`` is opened once at resolution time and used for the whole load, so a backing
    copy that tierfs demotes (renames or unlinks) mid-load stays readable.
    """

    requested: str
    read_path: str
    fd: int
    size: int
    fs: str
    on_tierfs: bool = False
    tier: str | None = None
    xxh3: str | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _warn_once(key: str, msg: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(msg, *args)


def resolve(path: str) -> ResolvedFile:
    """Open ``path`` for reading, through its tierfs backing copy when there is one.

    Raises:
        OSError: the file cannot be opened at all.
    """
    path = os.path.abspath(path)
    backing_raw = getxattr(path, XATTR_BACKING)
    if backing_raw is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return ResolvedFile(path, path, fd, os.fstat(fd).st_size, fs_type(path))
    backing = backing_raw.decode("utf-8", "surrogateescape").rstrip("\0")
    tier_raw = getxattr(path, XATTR_TIER)
    tier = tier_raw.decode("utf-8", "replace").rstrip("\0") if tier_raw else None
    xxh_raw = getxattr(path, XATTR_XXH3)
    xxh3 = xxh_raw.decode("ascii", "replace").strip().strip("\0").lower() if xxh_raw else None
    try:
        fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        _warn_once(
            os.path.dirname(path),
            "tierfs backing copy %s of %s cannot be opened (%s); reading through the mount",
            backing,
            path,
            e.strerror,
        )
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return ResolvedFile(path, path, fd, os.fstat(fd).st_size, fs_type(path), True, tier, xxh3)
    log.debug("tierfs: %s is served by %s (tier %s)", path, backing, tier)
    return ResolvedFile(path, backing, fd, os.fstat(fd).st_size, fs_type(backing), True, tier, xxh3)


@dataclass(frozen=True)
class StorageProfile:
    """What the loader knows about the device under a file, to size reads and threads."""

    fs: str
    rotational: bool
    max_sectors_kb: int | None


def storage_profile(path: str, fs: str) -> StorageProfile:
    """Probe sysfs for the block device under ``path`` (best effort)."""
    rotational = False
    max_kb: int | None = None
    if fs in MEMORY_FS or fs in NETWORK_FS:
        return StorageProfile(fs, False, None)
    try:
        st = os.stat(path)
        base = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        q = os.path.join(base, "queue")
        if not os.path.isdir(q):
            q = os.path.join(base, "..", "queue")
        with open(os.path.join(q, "rotational")) as f:
            rotational = f.read().strip() == "1"
        # Virtual disks (virtio, Xen) report rotational=1 whatever backs them; they want depth.
        real = os.path.realpath(base)
        if "virtio" in real or os.path.basename(real).startswith(("vd", "xvd")):
            rotational = False
        with open(os.path.join(q, "max_sectors_kb")) as f:
            max_kb = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return StorageProfile(fs, rotational, max_kb)
