"""Host memory: page-aligned buffers, a reusable staging pool, pinned staging for CUDA.

Fresh memory is expensive on VMs (first touch costs as much as the I/O), so staging buffers
are pooled and reused, in transparent huge pages, which also make each O_DIRECT request a
few large DMA segments.  Fresh destinations (the tensors a load returns) get huge pages only
where the host does not take free memory back: on a VM whose balloon reports free pages,
a 2 MiB page can only come from a block the host has reclaimed, and its first touch
measured about 4x slower than that of 4 KiB pages (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PAGE = 4096
_HUGE = 2 << 20
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22
_MADV_POPULATE_WRITE = 23
# virtio-balloon's VIRTIO_BALLOON_F_REPORTING: sysfs lists feature bits as '0'/'1', bit 0 first.
_BALLOON_FEATURES = "/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"
_F_REPORTING = 5


def host_reclaims_free_pages() -> bool:
    """Whether this machine is a VM that hands its free pages back to the host."""
    for path in glob.glob(_BALLOON_FEATURES):
        try:
            bits = Path(path).read_text().strip()
        except OSError:
            continue
        if len(bits) > _F_REPORTING and bits[_F_REPORTING] == "1":
            return True
    return False


def _huge_destinations() -> bool:
    # LOADER_HUGE=1/0 overrides the choice, for measurements.
    env = os.environ.get("LOADER_HUGE")
    if env in ("0", "1"):
        return env == "1"
    return not host_reclaims_free_pages()


HUGE_DESTINATIONS = _huge_destinations()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


def _madvise(addr: int, length: int, advice: int) -> None:
    start = addr - addr % PAGE
    _libc.madvise(start, length + (addr - start), advice)


def populate_read(addr: int, length: int) -> None:
    """Map ``[addr, addr + length)`` of a file mapping ahead of a copy out of it (best
    effort): one call maps every page, where faults inside the copy would take one each."""
    _madvise(addr, length, _MADV_POPULATE_READ)


def unmap_pages(addr: int, length: int) -> None:
    """Drop this process's mapping of the pages of ``[addr, addr + length)`` of a file
    mapping that was only read (the file's pages stay where they are)."""
    _madvise(addr, length, _MADV_DONTNEED)


class HostBuffer:
    """A page-aligned block of host memory with its address, a memoryview and a tensor.

    ``huge`` advises transparent huge pages for an unpinned buffer of 2 MiB or more.

    The uint8 tensor keeps the underlying mapping alive, so tensors carved out of it stay
    valid after the buffer object itself is dropped.
    """

    __slots__ = ("_keep", "addr", "event", "mv", "size", "tensor")

    def __init__(self, size: int, pinned: bool = False, huge: bool = True) -> None:
        size = max(PAGE, (size + PAGE - 1) // PAGE * PAGE)
        self.size = size
        self.event: Any = None
        self._keep: Any
        if pinned:
            # torch's pinned allocator gives each request a cudaHostAlloc block of its own,
            # page-aligned and rounded up to a power of two: one page more "for alignment"
            # would pin 16 MiB for every 8 MiB chunk.  Over-allocate only if it was not aligned.
            raw = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            if raw.data_ptr() % PAGE:
                raw = torch.empty(size + PAGE, dtype=torch.uint8, pin_memory=True)
            skew = (-raw.data_ptr()) % PAGE
            self.tensor = raw[skew : skew + size]
            self.addr = self.tensor.data_ptr()
            # Through ctypes rather than .numpy(): torch does not require numpy.
            self.mv = tensor_bytes(self.tensor)
            self._keep = raw
        else:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if size >= _HUGE and huge and hasattr(mmap, "MADV_HUGEPAGE"):
                with contextlib.suppress(OSError):
                    mm.madvise(mmap.MADV_HUGEPAGE)
            self.mv = memoryview(mm)
            self.addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            self.tensor = torch.frombuffer(mm, dtype=torch.uint8)
            self._keep = mm

    def prefault(self, offset: int = 0, length: int | None = None) -> None:
        """Fault pages in ahead of use (best effort; MADV_POPULATE_WRITE needs Linux 5.14)."""
        if not isinstance(self._keep, mmap.mmap):
            return
        length = self.size - offset if length is None else length
        # Through ctypes, not mmap.madvise: the latter holds the GIL for the whole populate
        # (tens of ms per chunk), which would serialise every reader thread behind it.
        _madvise(self.addr + offset, length, _MADV_POPULATE_WRITE)

    def view(
        self, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """A typed tensor over ``[offset, offset + nbytes)`` sharing this buffer's memory."""
        flat = self.tensor[offset : offset + nbytes]
        return flat.view(dtype).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(b"")
    arr = (ctypes.c_char * n).from_address(t.data_ptr())
    return memoryview(arr).cast("B")


class BufferPool:
    """Reusable staging buffers with a soft cap on the bytes they hold in total.

    ``try_acquire`` reuses the smallest free buffer that fits, allocates a new one while under
    the cap, and otherwise returns ``None`` so the caller can wait for a release.  A buffer
    whose ``event`` (a CUDA event of a pending copy) has not completed is not reused.
    """

    def __init__(self, capacity: int, factory: Callable[[int], HostBuffer]) -> None:
        self.capacity = capacity
        self._factory = factory
        self._free: list[HostBuffer] = []
        self._lock = threading.Lock()
        self.allocated = 0
        self.peak = 0

    def try_acquire(self, size: int, force: bool = False) -> HostBuffer | None:
        with self._lock:
            best: HostBuffer | None = None
            for b in self._free:
                if b.size >= size and (best is None or b.size < best.size) and _ready(b, force):
                    best = b
            if best is not None:
                self._free.remove(best)
                return best
            if not force and self.allocated + size > self.capacity:
                if self._free and self.allocated + size - self._free[0].size <= self.capacity:
                    # Swap a too-small free buffer for a fitting one rather than stall.
                    victim = self._free.pop(0)
                    if _ready(victim, True):
                        self.allocated -= victim.size
                else:
                    return None
            self.allocated += size
            self.peak = max(self.peak, self.allocated)
        buf = self._factory(size)
        with self._lock:
            self.allocated += buf.size - size
        return buf

    def release(self, buf: HostBuffer) -> None:
        with self._lock:
            self._free.append(buf)


def _ready(b: HostBuffer, wait: bool) -> bool:
    if b.event is None:
        return True
    if wait:
        b.event.synchronize()
        b.event = None
        return True
    if b.event.query():
        b.event = None
        return True
    return False
