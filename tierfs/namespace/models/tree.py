"""The tree a model scan reads: the `TreeView` protocol and its view of one real directory.

Any tree that implements `TreeView` can be scanned: a real directory
(`DirectoryTreeView`) or tierfs's merged namespace (`tierfs.namespace.inventory`).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class EntryKind(StrEnum):
    """Type of a directory entry, as seen without following symlinks."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


class TreeView(Protocol):
    """Read-only view of a tree addressed by POSIX-style relative paths ("" is the root).

    Every method raises ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) when the
    entry cannot be accessed; ``read_text`` may also raise ``UnicodeDecodeError``.
    """

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        """Entries of directory ``rel`` as (name, kind), without following symlinks."""
        ...

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        """Kind and size in bytes of ``rel``, without following a final symlink."""
        ...

    def readlink(self, rel: str) -> str:
        """Target of symlink ``rel``, verbatim."""
        ...

    def read_text(self, rel: str, limit: int) -> str:
        """At most ``limit`` bytes of file ``rel``, decoded as UTF-8."""
        ...


def _kind_of_mode(mode: int) -> EntryKind:
    if stat_mod.S_ISREG(mode):
        return EntryKind.FILE
    if stat_mod.S_ISDIR(mode):
        return EntryKind.DIR
    if stat_mod.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


class DirectoryTreeView:
    """:class:`TreeView` over one real directory.

    Args:
        root: the directory every relative path is resolved against.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _abs(self, rel: str) -> str:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise FileNotFoundError(errno.ENOENT, "path escapes the tree", rel)
        return os.path.join(self.root, rel) if rel else os.fspath(self.root)

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        out: list[tuple[str, EntryKind]] = []
        with os.scandir(self._abs(rel)) as it:
            for entry in it:
                # DirEntry answers these from d_type, so listing costs no stat per entry.
                if entry.is_symlink():
                    kind = EntryKind.SYMLINK
                elif entry.is_dir(follow_symlinks=False):
                    kind = EntryKind.DIR
                elif entry.is_file(follow_symlinks=False):
                    kind = EntryKind.FILE
                else:
                    kind = EntryKind.OTHER
                out.append((entry.name, kind))
        return out

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        st = os.lstat(self._abs(rel))
        return _kind_of_mode(st.st_mode), st.st_size

    def readlink(self, rel: str) -> str:
        return os.readlink(self._abs(rel))

    def read_text(self, rel: str, limit: int) -> str:
        with open(self._abs(rel), "rb") as f:
            return f.read(limit).decode("utf-8")
