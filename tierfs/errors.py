"""Named errors of tierfs.

Every error carries the path it concerns and an errno, so that the FUSE boundary
(`tierfs.fuse.operations`) can turn it into `FUSEError(errno)` and the CLI can print one clear line.
"""

from __future__ import annotations

import errno as _errno


class TierfsError(Exception):
    """Base of all tierfs errors; carries the path it concerns and an errno."""

    def __init__(self, message: str, *, path: str | None = None, errno: int = 5) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class ConfigError(TierfsError):
    """A config file is missing, malformed or names something unusable."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.EINVAL)
        self.key = key

    def __str__(self) -> str:
        where = self.path or "<config>"
        if self.key:
            where = f"{where}: {self.key}"
        return f"{where}: {self.args[0]}"


class MountError(TierfsError):
    """The filesystem cannot be mounted or unmounted at the given mountpoint."""


class StateDirError(TierfsError):
    """The state directory is unusable, untrusted, or held by another process."""


class CatalogError(TierfsError):
    """The catalog database is unusable (corrupt, too new, locked)."""


class NamespaceError(TierfsError):
    """A lookup in the merged namespace failed."""


class BackingIOError(TierfsError):
    """Reading a backing copy failed."""


class TierError(TierfsError):
    """A RAM tier is missing, too small, not RAM-backed, or unknown."""


class PoolError(TierfsError):
    """A pool cannot be connected, disconnected or resized (a step failed, or a tool is
    missing, or a host cannot be reached); the message names what."""


class ControlError(TierfsError):
    """The control API of a running mount refused a request or cannot be reached."""
