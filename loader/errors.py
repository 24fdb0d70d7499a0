"""Named error classes of the loader; every one carries the path it is about."""

from __future__ import annotations


class LoaderError(Exception):
    """Base class of every error the loader raises."""

    def __init__(self, path: str | None, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SafetensorsFormatError(LoaderError, ValueError):
    """A file is not a valid safetensors file; the message names the file and the problem."""


class LoaderIOError(LoaderError, OSError):
    """Reading a file failed; carries the errno of the failed call."""

    def __init__(self, path: str | None, message: str, errno_: int | None = None) -> None:
        super().__init__(path, message)
        self.errno = errno_


class UnknownBackendError(LoaderError, ValueError):
    """A backend name that is not registered; the message lists the valid names."""


class BackendUnavailableError(LoaderError):
    """No candidate backend could serve a file; the message says why each one failed."""


class IntegrityError(LoaderError):
    """The content hash of a file does not match the one tierfs published."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(path, f"xxh3-128 mismatch: expected {expected}, read {actual}")
        self.expected = expected
        self.actual = actual


class CheckpointError(LoaderError, ValueError):
    """The set of files is inconsistent (duplicate tensor names, bad index, no files)."""


class ConfigError(LoaderError, ValueError):
    """An argument or environment setting the loader cannot use."""
