"""Memory-mapped files: for tmpfs/ramfs, where the bytes already sit in RAM.

With ``copy=False`` on CPU, tensors are views of a private mapping: they share the RAM
tier's pages and cost no extra memory (a write would copy just the touched page).  With a
copy, the bytes are read (``preadv``) and copied into fresh memory (``loader.fill``).
"""

from __future__ import annotations

import logging

from loader.backends.base import (
    Backend,
    BackendFile,
    FileMapping,
    OpenContext,
    pread_full,
    unavailable,
)
from loader.tierfs import ResolvedFile

log = logging.getLogger(__name__)


class MappedFile(BackendFile):
    def __init__(self, rf: ResolvedFile, mapping: FileMapping) -> None:
        super().__init__(rf)
        self.mapping = mapping
        self.mv = memoryview(mapping.mm)

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        pread_full(self.rf.fd, self.path, buf, offset, need)

    def view(self, offset: int, length: int) -> memoryview | None:
        return self.mv[offset : offset + length]

    def close(self) -> None:
        # Tensors built on the mapping keep it alive through their own buffer references;
        # dropping ours is all that is needed.
        try:
            self.mv.release()
        except BufferError:
            log.debug("mapping of %s still exported; left to the garbage collector", self.path)


class MmapBackend(Backend):
    """``mmap`` of the (backing) file; zero-copy views with ``copy=False``."""

    name = "mmap"
    zero_copy = True

    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        try:
            mapping = FileMapping(rf)
        except (OSError, ValueError) as e:
            raise unavailable(self.name, rf, f"mmap failed ({e})") from e
        return MappedFile(rf, mapping)
