"""Memory for O_DIRECT I/O: page aligned, and backed by huge pages where the kernel can."""

from __future__ import annotations

import contextlib
import mmap


def io_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer for O_DIRECT I/O, backed by huge pages where the kernel can.

    Private anonymous memory with MADV_HUGEPAGE: on a VM, DMA into 4 KiB pages costs far
    more than into huge ones (measured here: 0.8 against 4.5 GB/s for O_DIRECT reads).
    Python's default ``mmap(-1, n)`` is shared (shmem) memory, which gets no huge pages.
    """
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            buffer.madvise(mmap.MADV_HUGEPAGE)
    # Touch it once now, so the copy itself never waits on a page fault.
    for offset in range(0, size, 4096):
        buffer[offset] = 0
    return buffer
