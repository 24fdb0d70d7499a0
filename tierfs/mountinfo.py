"""The kernel's mount table (/proc/self/mountinfo), parsed in one place.

Part of the contract with `loader` (see README, "tierfs and the loader"): the loader
imports this module, so it imports nothing but the standard library.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
# The kernel writes space, tab, newline and backslash in paths as three octal digits.
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (the fields tierfs and its tests use)."""

    #: Unique while the mount exists: the same id means the very same mount.
    mount_id: int
    mountpoint: Path
    fstype: str
    source: str
    #: The device number, as ``major:minor`` (the key of /sys/class/bdi).
    major_minor: str
    #: Options of the file system itself (for tmpfs: ``size=``, ``mode=``, ``huge=``).
    super_options: str


def unescape(field: str) -> str:
    """A path field of mountinfo, with the kernel's octal escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read_mounts(table: Path = MOUNTINFO) -> list[MountEntry]:
    """Every mount, in the kernel's order (later entries stack on earlier ones).

    Raises:
        OSError: the table cannot be read.
    """
    entries = []
    with open(table, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 2:
                continue
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    mountpoint=Path(unescape(fields[4])),
                    fstype=rfields[0],
                    source=unescape(rfields[1]),
                    major_minor=fields[2],
                    super_options=rfields[2] if len(rfields) > 2 else "",
                )
            )
    return entries


def mount_entry(path: Path | str) -> MountEntry | None:
    """The mount at exactly `path`, if any, found without touching the path itself.

    A dead FUSE daemon leaves a mount whose stat hangs or fails with ENOTCONN, so the
    path is made absolute but not resolved. When mounts stack, the top one is returned.

    Raises:
        OSError: the table cannot be read.
    """
    target = Path(os.path.abspath(path))
    found = None
    for entry in read_mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def containing_mount(path: Path | str) -> MountEntry | None:
    """The mount that holds `path` (symlinks resolved): the longest mountpoint prefix.

    Raises:
        OSError: the table cannot be read.
    """
    target = Path(os.path.realpath(path))
    best: MountEntry | None = None
    for entry in read_mounts():
        inside = entry.mountpoint == target or entry.mountpoint in target.parents
        if inside and (best is None or len(entry.mountpoint.parts) >= len(best.mountpoint.parts)):
            best = entry
    return best
