"""The mountpoint: checks before mounting, recovering a stale mount, unmounting, and the
kernel settings of a live mount.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

from tierfs.config import Config
from tierfs.errors import MountError
from tierfs.mountinfo import MountEntry, mount_entry

log = logging.getLogger(__name__)

FSNAME = "tierfs"
# Logged once the mount answers requests; `tierfs.daemon.spawn` waits for it.
SERVING = "serving"


def is_tierfs(entry: MountEntry | None) -> bool:
    """Whether a mount table entry is a tierfs mount (live or stale)."""
    return (
        entry is not None
        and entry.fstype in (f"fuse.{FSNAME}", "fuse")
        and (entry.source == FSNAME)
    )


def lazy_unmount(mountpoint: Path) -> None:
    """Detach a mount, even a stale one whose daemon died.

    Raises:
        MountError: neither fusermount3 nor umount could detach it.
    """
    commands = [["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]]
    errors = []
    for command in commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{command[0]}: {exc}")
            continue
        if result.returncode == 0:
            return
        errors.append(result.stderr.strip() or f"{command[0]} exited {result.returncode}")
    raise MountError(
        f"cannot unmount {mountpoint}: {'; '.join(errors)}", path=str(mountpoint), errno=errno.EBUSY
    )


def prepare_mountpoint(mountpoint: Path) -> None:
    """Refuse a missing, busy or already mounted mountpoint; recover a stale tierfs one.

    Raises:
        MountError: naming the mountpoint and what is wrong with it.
    """
    entry = mount_entry(mountpoint)
    if entry is not None:
        if not is_tierfs(entry):
            raise MountError(
                f"mountpoint {mountpoint} is busy: {entry.fstype} from {entry.source} "
                "is mounted there",
                path=str(mountpoint),
                errno=errno.EBUSY,
            )
        if _is_alive(mountpoint):
            raise MountError(
                f"tierfs is already mounted at {mountpoint}; unmount it first "
                f"(tierfs unmount {mountpoint})",
                path=str(mountpoint),
                errno=errno.EBUSY,
            )
        log.warning("%s holds a stale tierfs mount (its daemon died); detaching it", mountpoint)
        lazy_unmount(mountpoint)
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(
            f"mountpoint {mountpoint} does not exist (create it with: mkdir -p {mountpoint})",
            path=str(mountpoint),
            errno=errno.ENOENT,
        ) from None
    except OSError as exc:
        raise MountError(
            f"mountpoint {mountpoint}: {exc.strerror}", path=str(mountpoint), errno=exc.errno or 5
        ) from None
    if not os.path.isdir(mountpoint) or not (st.st_mode & 0o040000):
        raise MountError(
            f"mountpoint {mountpoint} is not a directory", path=str(mountpoint), errno=errno.ENOTDIR
        )


def _is_alive(mountpoint: Path) -> bool:
    """Whether a FUSE mount still has a daemon answering it.

    statfs of a mount whose daemon died fails at once with ENOTCONN; a stat would not,
    since the kernel answers it from cached attributes. The probe runs in a child process
    with a timeout, so a daemon that is alive but wedged cannot hang us.
    """
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"import os; os.statvfs({str(mountpoint)!r})"],
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return True
    return result.returncode == 0


def mount_options(config: Config) -> set[str]:
    """The FUSE mount options the config asks for."""
    options = {f"fsname={FSNAME}", f"subtype={FSNAME}", "ro", "noatime"}
    if config.default_permissions:
        options.add("default_permissions")
    if config.allow_other:
        options.add("allow_other")
    return options


def set_readahead(entry: MountEntry, readahead: int) -> bool:
    """Raise the kernel readahead of the mount's bdi: 128 KiB requests are slow."""
    path = Path("/sys/class/bdi") / entry.major_minor / "read_ahead_kb"
    try:
        path.write_text(str(max(readahead // 1024, 4)))
    except OSError as exc:
        log.warning("cannot set readahead via %s: %s", path, exc.strerror)
        return False
    log.debug("readahead of %s set to %d KiB", entry.mountpoint, readahead // 1024)
    return True
