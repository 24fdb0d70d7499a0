"""Buffered reads through the page cache, from a pool of threads.

When the file system also accepts O_DIRECT, part of the reader threads read around the
cache instead: page-cache copies cost CPU while direct reads cost device bandwidth, so a
warm file is served by both at once.  The threads share one queue of requests, which
balances the split by itself.
"""

from __future__ import annotations

import contextlib
import os
import threading

from loader.backends.base import Backend, BackendFile, OpenContext, pread_full
from loader.tierfs import ResolvedFile

_HYBRID = os.environ.get("LOADER_HYBRID", "1") == "1"


class BufferedFile(BackendFile):
    def __init__(self, rf: ResolvedFile, direct: BackendFile | None, copy_threads: int) -> None:
        super().__init__(rf)
        self.direct = direct
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

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        if self._uses_direct():
            assert self.direct is not None
            self.direct.read_into(buf, addr, offset, need)
            return
        pread_full(self.rf.fd, self.path, buf, offset, need)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()


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
        return BufferedFile(rf, direct, min(8, max(1, os.cpu_count() or 1)))
