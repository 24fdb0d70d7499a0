"""RAM tiers: where hot copies live.

A tier directory holds ``hot/<store>/<relpath>`` (complete, verified, read-only copies)
and ``.tmp/`` (copies being written). Hot copies are immutable: they are written under a
temp name, verified, then renamed into place, and never modified afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tierfs.config import TierConfig, format_size
from tierfs.errors import TierError

log = logging.getLogger(__name__)

RAM_FSTYPES = frozenset({"tmpfs", "ramfs"})
HOT_DIR = "hot"
TMP_DIR = ".tmp"


@dataclass(frozen=True)
class FsInfo:
    """The file system a path lies on, from /proc/self/mountinfo."""

    mountpoint: Path
    fstype: str
    source: str


def filesystem_of(path: Path) -> FsInfo:
    """The mount that contains `path` (the longest mountpoint prefix).

    Raises:
        TierError: /proc/self/mountinfo cannot be read.
    """
    target = os.path.realpath(path)
    best: FsInfo | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        raise TierError(f"cannot read mountinfo: {exc.strerror}", errno=exc.errno or 5) from None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and (best is None or len(mountpoint) >= len(str(best.mountpoint))):
            best = FsInfo(Path(mountpoint), rfields[0], rfields[1])
    if best is None:
        raise TierError(f"{path} lies on no mounted file system", path=str(path))
    return best


@dataclass
class Tier:
    """A prepared tier: its config, its capacity, and where its files go."""

    config: TierConfig
    capacity: int
    fstype: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def root(self) -> Path:
        return self.config.path

    @property
    def hot_root(self) -> Path:
        return self.config.path / HOT_DIR

    @property
    def tmp_root(self) -> Path:
        return self.config.path / TMP_DIR

    def hot_path(self, store: str, relpath: str) -> Path:
        return self.hot_root / store / relpath

    def temp_path(self, file_id: int) -> Path:
        return self.tmp_root / f"{file_id}.{secrets.token_hex(6)}.part"

    def free_bytes(self) -> int:
        """What the file system itself still has (the catalog tracks what we claimed)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


def prepare_tier(config: TierConfig) -> Tier:
    """Make a configured tier usable, or say clearly why it is not.

    As root, a ``ram`` tier whose path is not a mount point gets a tmpfs of the configured
    size (unless ``mount_tmpfs = false``). Otherwise the existing directory is used and its
    size is enforced by tierfs's own accounting.

    Raises:
        TierError: the tier is missing, too small, not RAM-backed, or cannot be mounted.
    """
    path = config.path
    where = f"tier {config.name!r} at {path}"
    is_mount = path.is_dir() and os.path.ismount(path)
    if config.kind == "ram" and config.mount_tmpfs and not is_mount:
        if os.geteuid() != 0:
            raise TierError(
                f"{where}: not a mount point, and only root can mount a tmpfs there "
                "(mount one yourself, or set mount_tmpfs = false to use the directory)",
                path=str(path),
                errno=errno.EPERM,
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TierError(
                f"{where}: cannot create the directory: {exc.strerror}",
                path=str(path),
                errno=exc.errno or errno.EIO,
            ) from None
        _mount_tmpfs(path, config.size, where, huge=config.huge_pages)
    if not path.is_dir():
        raise TierError(f"{where}: no such directory", path=str(path), errno=errno.ENOENT)
    fs = filesystem_of(path)
    if config.kind == "ram" and fs.fstype not in RAM_FSTYPES:
        raise TierError(
            f"{where}: not RAM-backed (it is on {fs.fstype} from {fs.source}); "
            "a ram tier must be tmpfs or ramfs",
            path=str(path),
            errno=errno.EINVAL,
        )
    st = os.statvfs(path)
    fs_total = st.f_blocks * st.f_frsize
    # ramfs reports no size; tmpfs and block file systems do.
    if fs.fstype != "ramfs" and fs_total < config.size:
        raise TierError(
            f"{where}: too small: the file system holds {format_size(fs_total)}, "
            f"the config asks for {format_size(config.size)}",
            path=str(path),
            errno=errno.ENOSPC,
        )
    for sub in (HOT_DIR, TMP_DIR):
        (path / sub).mkdir(mode=0o700, exist_ok=True)
    log.info("%s: %s, %s", where, fs.fstype, format_size(config.size))
    return Tier(config=config, capacity=config.size, fstype=fs.fstype)


def unlink_quietly(path: Path) -> None:
    """Remove a file on a tier if it is there; it being gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _mount_tmpfs(path: Path, size: int, where: str, *, huge: bool) -> None:
    options = f"size={size},mode=0700" + (",huge=within_size" if huge else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tierfs-tier", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise TierError(
            f"{where}: cannot mount a tmpfs: {result.stderr.strip()}",
            path=str(path),
            errno=errno.EIO,
        )
    log.info("mounted a %s tmpfs at %s", format_size(size), path)
