"""How much of a file the page cache holds: ``cachestat`` (Linux 6.5+), else ``mincore``."""

from __future__ import annotations

import ctypes
import mmap

_libc = ctypes.CDLL(None, use_errno=True)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


_SYS_CACHESTAT = 451  # same number in the generic and x86_64 tables (Linux 6.5+)


def _cachestat_fraction(fd: int, size: int) -> float | None:
    rng, out = _CachestatRange(0, 0), _Cachestat()
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(out), 0) != 0:
        return None
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    return min(1.0, out.nr_cache / pages)


def page_cache_fraction(fd: int, size: int) -> float:
    """Fraction of a file's pages in the page cache (``cachestat``, else ``mincore``);
    0.0 when unknown."""
    if size <= 0:
        return 0.0
    quick = _cachestat_fraction(fd, size)
    if quick is not None:
        return quick
    try:
        # A private writable mapping lends its address through ctypes; it is never touched.
        probe = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return 0.0
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        cbuf = ctypes.c_char.from_buffer(probe)
        rc = _libc.mincore(ctypes.c_void_p(ctypes.addressof(cbuf)), ctypes.c_size_t(size), vec)
        del cbuf
        if rc != 0:
            return 0.0
        # Only bit 0 is defined (resident); the others are reserved and zero.
        return 1.0 - bytes(vec).count(0) / pages
    finally:
        probe.close()
