"""Buffered reads through the page cache, from a pool of threads.

When the file system also accepts O_DIRECT, part of the reader threads read around the
cache instead: page-cache copies cost CPU while direct reads cost device bandwidth, so a
warm file is served by both at once.  The threads share one queue of requests, which
balances the split by itself.  Fresh destinations of a copy into CPU memory are filled
out of a mapping of the file instead (``loader.fill``), which costs the least CPU.
"""

from __future__ import annotations

import contextlib
import os
import threading

from loader.backends.base import Backend, BackendFile, FileMapping, OpenContext, pread_full
from loader.tierfs import ResolvedFile

_HYBRID = os.environ.get("LOADER_HYBRID", "1") == "1"


class BufferedFile(BackendFile):
    def __init__(
        self,
        rf: ResolvedFile,
        direct: BackendFile | None,
        copy_threads: int,
        mapping: FileMapping | None,
    ) -> None:
        super().__init__(rf)
        self.direct = direct
        self.mapping = mapping
        self._copy_threads = copy_threads
        self._roles: dict[int, bool] = {}
        self._lock = threading.Lock()

    def _uses_direct(self) -> bool:
        if self.direct is None:
            return False
        tid = threading.get_ident()
        role = self._roles.get(tid)
        if role is None:
            with self._lock:
                role = len(self._roles) >= self._copy_threads
                self._roles[tid] = role
        return role

    def mapped_address(self) -> int | None:
        return self.mapping.addr if self.mapping is not None else None

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        if self._uses_direct():
            assert self.direct is not None
            self.direct.read_into(buf, addr, offset, need)
            return
        pread_full(self.rf.fd, self.path, buf, offset, need)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        if self.mapping is not None:
            self.mapping.mm.close()
            self.mapping = None


class BufferedBackend(Backend):
    """Plain ``preadv``: works on every file system and wins when the page cache is warm."""

    name = "buffered"

    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        with contextlib.suppress(OSError):
            os.posix_fadvise(rf.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        direct = None
        if _HYBRID:
            from loader.backends.base import BackendUnavailableError
            from loader.backends.direct import DirectBackend

            with contextlib.suppress(BackendUnavailableError):
                direct = DirectBackend().open(rf, ctx)
        mapping = None
        if rf.fs != "fuse":
            # Fresh destinations are filled out of the mapping (loader.fill); through a FUSE
            # mount (tierfs's fallback) every page would be a request to the daemon.
            with contextlib.suppress(OSError, ValueError):
                mapping = FileMapping(rf)
        return BufferedFile(rf, direct, min(8, max(1, os.cpu_count() or 1)), mapping)
