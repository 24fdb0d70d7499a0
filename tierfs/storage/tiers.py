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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tierfs.config import TierConfig, format_size
from tierfs.errors import TierError
from tierfs.mountinfo import MountEntry, containing_mount
from tierfs.storage.trust import PRIVATE_MODE, untrusted_entry

log = logging.getLogger(__name__)

RAM_FSTYPES = frozenset({"tmpfs", "ramfs"})
# The source name of the tmpfs tierfs mounts for a tier (what the mount table shows).
TMPFS_SOURCE = "tierfs-tier"
HOT_DIR = "hot"
TMP_DIR = ".tmp"


def filesystem_of(path: Path) -> MountEntry:
    """The mount that contains `path`.

    Raises:
        TierError: /proc/self/mountinfo cannot be read.
    """
    try:
        found = containing_mount(path)
    except OSError as exc:
        raise TierError(f"cannot read mountinfo: {exc.strerror}", errno=exc.errno or 5) from None
    if found is None:
        raise TierError(f"{path} lies on no mounted file system", path=str(path))
    return found


@dataclass
class Tier:
    """A prepared tier: its config, its capacity, and where its files go."""

    config: TierConfig
    capacity: int
    fstype: str
    #: This call of prepare_tier mounted the tmpfs (so it is empty and ours to take back).
    mounted_here: bool = False
    #: False while the pool is disconnected: its capacity is 0, so nothing is placed there.
    online: bool = True

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

    @property
    def durable(self) -> bool:
        """A block file system (a remote RAM disk), whose copies must be flushed to it."""
        return self.fstype not in RAM_FSTYPES

    def free_bytes(self) -> int:
        """What the file system itself still has (the catalog tracks what we claimed)."""
        if not self.online:
            return 0
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def take_offline(self) -> None:
        """Stop placing anything here (a pool being disconnected or gone)."""
        self.online = False
        self.capacity = 0

    def adopt(self, prepared: Tier) -> None:
        """Take over a freshly prepared tier's state, keeping this object (others hold it)."""
        self.config = prepared.config
        self.fstype = prepared.fstype
        self.capacity = prepared.capacity
        self.online = True


def offline_tier(config: TierConfig) -> Tier:
    """A tier whose pool is disconnected: known by name, holding nothing, taking nothing."""
    return Tier(config=config, capacity=0, fstype="", online=False)


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
    mounted_here = False
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
        mount_tmpfs(path, config.size, where, huge=config.huge_pages)
        mounted_here = True
    try:
        return _check_tier(config, where, mounted_here)
    except TierError:
        if mounted_here:
            unmount_tmpfs(path)
        raise


def prepare_tiers(configs: Sequence[TierConfig]) -> list[Tier]:
    """Prepare every configured tier, all or none.

    When one tier fails, the tmpfs this call mounted for the tiers before it are unmounted
    again (they are still empty), so a refused start leaves no mounts behind.  Tmpfs that
    were mounted before (a restart's hot copies) are never touched.

    Raises:
        TierError: the first tier that cannot be used, as from ``prepare_tier``.
    """
    tiers: list[Tier] = []
    try:
        for config in configs:
            tiers.append(prepare_tier(config))
    except TierError:
        release_fresh_tiers(tiers)
        raise
    return tiers


def release_fresh_tiers(tiers: Sequence[Tier]) -> None:
    """Unmount the tmpfs that this start mounted, when the start is refused after all.

    They hold nothing yet; tmpfs that were there before are left alone.
    """
    for tier in tiers:
        if tier.mounted_here:
            unmount_tmpfs(tier.root)


def _check_tier(config: TierConfig, where: str, mounted_here: bool) -> Tier:
    path = config.path
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
    # Whoever can write the tier chooses the bytes that readers of the mount get.
    problem = untrusted_entry(path)
    if problem is not None:
        raise TierError(
            f"{where}: refused: {problem}; tier directories must belong to tierfs's user "
            "and be writable by no one else",
            path=str(path),
            errno=errno.EPERM,
        )
    for sub in (HOT_DIR, TMP_DIR):
        (path / sub).mkdir(mode=PRIVATE_MODE, exist_ok=True)
        # Hot copies are copies of files other users may not read: whatever mode the
        # directory had, only tierfs's user may look inside.
        os.chmod(path / sub, PRIVATE_MODE)
    log.info("%s: %s, %s", where, fs.fstype, format_size(config.size))
    return Tier(config=config, capacity=config.size, fstype=fs.fstype, mounted_here=mounted_here)


def unlink_quietly(path: Path) -> None:
    """Remove a file on a tier if it is there; it being gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def mount_tmpfs(path: Path, size: int, where: str, *, huge: bool) -> None:
    """Mount a private tmpfs of `size` bytes at `path`.

    Raises:
        TierError: mount refused; its message is kept.
    """
    options = f"size={size},mode=0700" + (",huge=within_size" if huge else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, TMPFS_SOURCE, str(path)],
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


def remount_tmpfs(path: Path, size: int, where: str) -> None:
    """Give a mounted tmpfs a new size; its files stay.

    Raises:
        TierError: the kernel refused (a size below what the tmpfs holds, say).
    """
    result = subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise TierError(
            f"{where}: cannot resize the tmpfs to {format_size(size)}: {result.stderr.strip()}",
            path=str(path),
            errno=errno.EBUSY,
        )
    log.info("resized the tmpfs at %s to %s", path, format_size(size))


def unmount_tmpfs(path: Path) -> None:
    # Best effort: this runs on the way out of a refused start, whose error is the one that
    # matters; a failure here is logged, not raised over it.
    result = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("could not unmount the tmpfs at %s: %s", path, result.stderr.strip())
    else:
        log.info("unmounted the tmpfs at %s again", path)
