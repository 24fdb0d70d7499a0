"""O_DIRECT reads into page-aligned buffers: the disk's bandwidth without page-cache copies."""

from __future__ import annotations

import errno
import mmap
import os

from loader.backends.base import (
    Backend,
    BackendFile,
    OpenContext,
    io_error,
    pread_full,
    unavailable,
)
from loader.errors import LoaderIOError
from loader.plan import ALIGN
from loader.tierfs import ResolvedFile


class DirectFile(BackendFile):
    def __init__(self, rf: ResolvedFile, dfd: int) -> None:
        super().__init__(rf)
        self.dfd = dfd

    def read_into(self, buf: memoryview, addr: int, offset: int, need: int) -> None:
        if offset % ALIGN or len(buf) % ALIGN or addr % ALIGN:
            # Callers plan aligned requests; anything else is served correctly, just slower.
            pread_full(self.rf.fd, self.path, buf, offset, need)
            return
        done = 0
        while done < need:
            try:
                n = os.preadv(self.dfd, [buf[done:]], offset + done)
            except InterruptedError:
                continue
            except OSError as e:
                raise io_error(self.path, f"O_DIRECT read at {offset + done}", e) from e
            if n == 0:
                break
            done += n
            if done < need and n % ALIGN:
                # An unaligned short read leaves the rest unaligned: finish through the cache.
                pread_full(self.rf.fd, self.path, buf[done:], offset + done, need - done)
                return
        if done < need:
            raise LoaderIOError(
                f"file ended at {offset + done}, expected data up to {offset + need}",
                path=self.path,
                errno=errno.EIO,
            )

    def close(self) -> None:
        if self.dfd >= 0:
            os.close(self.dfd)
            self.dfd = -1


class DirectBackend(Backend):
    """O_DIRECT ``preadv`` from a thread pool; the default for disks and network storage."""

    name = "direct"

    def open(self, rf: ResolvedFile, ctx: OpenContext) -> BackendFile:
        # Reopen the already open fd through /proc so that a copy renamed or unlinked since
        # resolution (a tierfs demotion) is still the one read.
        try:
            dfd = os.open(f"/proc/self/fd/{rf.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            raise unavailable(self.name, rf, f"O_DIRECT open refused ({e.strerror})") from e
        probe = mmap.mmap(-1, ALIGN)
        try:
            os.preadv(dfd, [probe], 0)
        except OSError as e:
            os.close(dfd)
            if e.errno == errno.EINVAL:
                raise unavailable(self.name, rf, "file system refuses O_DIRECT reads") from e
            raise unavailable(self.name, rf, f"O_DIRECT probe read failed ({e.strerror})") from e
        finally:
            probe.close()
        return DirectFile(rf, dfd)
