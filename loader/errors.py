"""Named error classes of the loader, in tierfs's one hierarchy.

Every loader error is a `tierfs.errors.TierfsError` (message first, ``path=`` and ``errno=``
keywords), so one ``except TierfsError`` covers the filesystem and the loader. A bad
argument or environment setting raises tierfs's own `ConfigError`, re-exported here.
"""

from __future__ import annotations

import errno as _errno

from tierfs.errors import ConfigError as ConfigError  # re-exported: the loader raises it
from tierfs.errors import TierfsError


class LoaderError(TierfsError):
    """Base of every loader error but `ConfigError`; prints as ``path: message``."""

    @property
    def message(self) -> str:
        """The message without the path."""
        return str(self.args[0])

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SafetensorsFormatError(LoaderError, ValueError):
    """A file is not a valid safetensors file; the message names the problem."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.EINVAL)


# OSError types errno as optional, TierfsError as int; every LoaderIOError carries one.
class LoaderIOError(LoaderError, OSError):  # type: ignore[misc]
    """Reading a file failed; carries the errno of the failed call (EIO when unknown)."""

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.EIO if errno is None else errno)


class UnknownBackendError(LoaderError, ValueError):
    """A backend name that is not registered; the message lists the valid names."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.EINVAL)


class BackendUnavailableError(LoaderError):
    """No candidate backend could serve a file; the message says why each one failed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.ENOTSUP)


class IntegrityError(LoaderError):
    """The content hash of a file does not match the one tierfs published."""

    def __init__(self, message: str, *, path: str, expected: str, actual: str) -> None:
        super().__init__(message, path=path, errno=_errno.EIO)
        self.expected = expected
        self.actual = actual


class CheckpointError(LoaderError, ValueError):
    """The set of files is inconsistent (duplicate tensor names, bad index, no files)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path, errno=_errno.EINVAL)
