"""Backend registry.  ``get_backend`` resolves a name; unknown names list the valid ones."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from loader.backends.base import Backend, BackendFile, OpenContext
from loader.backends.buffered import BufferedBackend
from loader.backends.direct import DirectBackend
from loader.backends.gds import GdsBackend
from loader.backends.mmap import MmapBackend
from loader.errors import UnknownBackendError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class under its ``name`` (usable as a decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (DirectBackend, BufferedBackend, MmapBackend, GdsBackend):
    register_backend(_cls)


def available_backends() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """Instantiate the backend called ``name``.

    Raises:
        UnknownBackendError: no backend has that name; the message lists the valid ones.
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownBackendError(
            f"unknown backend {name!r}; valid backends: {', '.join(_REGISTRY)}"
        ) from None


def parse_candidates(spec: str | Sequence[str]) -> list[str]:
    """Split a comma-separated candidate list and check every name.

    Raises:
        UnknownBackendError: a name is not registered.
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = [n.strip() for n in names if n.strip()]
    for n in out:
        if n not in _REGISTRY:
            raise UnknownBackendError(
                f"unknown backend {n!r}; valid backends: {', '.join(_REGISTRY)}"
            )
    return out


__all__ = [
    "Backend",
    "BackendFile",
    "OpenContext",
    "available_backends",
    "get_backend",
    "parse_candidates",
    "register_backend",
]
