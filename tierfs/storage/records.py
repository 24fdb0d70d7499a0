"""The catalog's rows as values: files, their replicas and the access counts to flush."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tierfs.namespace.identity import FileIdentity


class ReplicaState(StrEnum):
    """The life of a hot copy. Only HOT replicas serve reads."""

    COPYING = "copying"
    HOT = "hot"
    EVICTING = "evicting"


@dataclass(frozen=True)
class FileRecord:
    """A cold file as last seen, with its content hash once known."""

    id: int
    store: str
    relpath: str
    size: int
    mtime_ns: int
    xxh3: str | None
    last_access: float | None
    opens: int
    bytes_read: int
    ctime_ns: int
    ino: int
    dev: int

    @property
    def identity(self) -> FileIdentity:
        return FileIdentity(self.size, self.mtime_ns, self.ctime_ns, self.ino, self.dev)


@dataclass(frozen=True)
class Replica:
    """A copy of a file on a tier."""

    file_id: int
    tier: str
    path: str
    state: ReplicaState
    size: int
    updated: float


@dataclass(frozen=True)
class AccessDelta:
    """Access counts gathered in memory and flushed in batches."""

    file_id: int
    opens: int
    bytes_read: int
    last_access: float
