"""The entries of the merged namespace: what a node is, its presented attributes, and
the cold stores and name conflicts they come from.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from tierfs.namespace.identity import FileIdentity

ROOT_INODE = 1


class Kind(Enum):
    """What a namespace entry is."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class Attrs:
    """The attributes presented for an entry, taken from its cold source."""

    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    uid: int
    gid: int
    blocks: int
    ino: int
    dev: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Attrs:
        """The attributes of a cold entry's lstat."""
        return cls(
            mode=st.st_mode,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
            blocks=st.st_blocks,
            ino=st.st_ino,
            dev=st.st_dev,
        )

    @property
    def identity(self) -> FileIdentity:
        return FileIdentity(self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)


@dataclass(frozen=True)
class ColdStore:
    """A read-only store merged into the namespace."""

    name: str
    root: Path


@dataclass(frozen=True)
class Conflict:
    """A name that several stores provide; `winner` serves it."""

    relpath: str
    winner: str
    losers: tuple[str, ...]


@dataclass
class Node:
    """One entry of the namespace. `relpath` is POSIX-style; the root's is ``""``."""

    inode: int
    parent: int
    name: str
    relpath: str
    kind: Kind
    attrs: Attrs
    # The store that serves this entry and its absolute path there (for a directory,
    # the first store that has it).
    store: str
    source: Path
    target: str | None = None
    children: dict[str, int] | None = None
    # (store, mtime_ns) of every backing directory when this directory was last scanned.
    stamp: tuple[tuple[str, int], ...] | None = None
    scanned_ns: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR


def join(parent: str, name: str) -> str:
    """``parent/name``, or ``name`` at the root."""
    return f"{parent}/{name}" if parent else name


def kind_of(mode: int) -> Kind | None:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return None
