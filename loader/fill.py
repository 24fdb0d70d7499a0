"""Filling fresh memory without zeroing it first: userfaultfd's ``UFFDIO_COPY``.

A load into memory the caller owns ends with the model in pages this process has never
touched.  Touched the usual way (a copy, a read, ``MADV_POPULATE_WRITE``), each such page
takes a fault, is zeroed by the kernel, and only then receives its bytes.  ``UFFDIO_COPY``
allocates each page and copies into it in one pass, in one system call per range: no zeroing
and no fault per page.  Measured on the 2-vCPU VM of docs/benchmarks.md, 4.45 GB from tmpfs
into fresh memory took 15-25% less CPU than ``pread`` into the same untouched destination.

A destination buffer is registered with the userfaultfd from its creation until its last
range is filled, and nothing else touches it meanwhile: a registered page that is not there
yet has no fault handler to wait for.  (Registering each range only for its own copy was
tried: registering splits the mapping under the mmap lock, and the reader threads then
serialised on it, slower than plain copies.)  Where userfaultfd is unavailable (an old
kernel, a seccomp profile that refuses it), ``OwnFill`` reads straight into the destination;
where a copy stops part way, the rest is unregistered and copied or read the ordinary way.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import threading
import time

from loader.backends.base import BackendFile, pread_full
from loader.memory import (
    HUGE_DESTINATIONS,
    PAGE,
    BufferPool,
    HostBuffer,
    populate_read,
    unmap_pages,
)
from loader.plan import Request

log = logging.getLogger(__name__)

_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}.get(os.uname().machine)
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
# _IOWR(0xAA, nr, struct): the ioctl numbers of <linux/userfaultfd.h>.
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_UFFDIO_UNREGISTER = 0x8010AA01
_UFFDIO_COPY = 0xC028AA03
_MODE_MISSING = 1
# Populating a fresh destination with MADV_POPULATE_WRITE before an O_DIRECT read into it
# keeps its faults out of the read's submission (LOADER_PREFAULT=0 turns it off).
_PREFAULT = os.environ.get("LOADER_PREFAULT", "1") == "1"

_U64 = ctypes.c_uint64


class _Api(ctypes.Structure):
    _fields_ = [("api", _U64), ("features", _U64), ("ioctls", _U64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", _U64), ("len", _U64)]


class _Register(ctypes.Structure):
    _fields_ = [("range", _Range), ("mode", _U64), ("ioctls", _U64)]


class _Copy(ctypes.Structure):
    _fields_ = [
        ("dst", _U64),
        ("src", _U64),
        ("len", _U64),
        ("mode", _U64),
        ("copy", ctypes.c_int64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _open_userfaultfd() -> int:
    """A userfaultfd for copies only, or -1 where the kernel or a sandbox refuses one."""
    if os.environ.get("LOADER_UFFD", "1") != "1" or _SYS_USERFAULTFD is None:
        return -1
    # User-mode-only: this process never asks the kernel to wait on its own faults, so the
    # unprivileged form (Linux 5.11+) is all it needs.
    fd = int(_libc.syscall(_SYS_USERFAULTFD, os.O_CLOEXEC | _UFFD_USER_MODE_ONLY))
    if fd < 0:
        log.debug("userfaultfd unavailable (%s): fresh memory is filled by copy", _strerror())
        return -1
    api = _Api(_UFFD_API, 0, 0)
    if _libc.ioctl(fd, _UFFDIO_API, ctypes.byref(api)) != 0:
        log.debug("UFFDIO_API refused (%s): fresh memory is filled by copy", _strerror())
        os.close(fd)
        return -1
    return fd


def _strerror() -> str:
    return os.strerror(ctypes.get_errno())


class FreshFiller:
    """Copies bytes into memory no one has touched yet, without zeroing it first.

    One filler serves all reader threads of a session; its methods are thread-safe.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._opened = False
        self._lock = threading.Lock()
        self.fallbacks = 0

    @property
    def available(self) -> bool:
        """Whether copies go through ``UFFDIO_COPY`` (opens the userfaultfd on first use)."""
        return self._ensure() >= 0

    def _ensure(self) -> int:
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self._fd = _open_userfaultfd()
                    self._opened = True
        return self._fd

    def register(self, addr: int, size: int) -> bool:
        """Claim the untouched buffer ``[addr, addr + size)`` for ``copy_registered``.

        Until ``unregister``, nothing but ``copy_registered`` may touch it: a page it has not filled
        yet would fault into a handler that does not exist (the kernel's own accesses fail
        with EFAULT, a user access would wait for ever).

        Returns:
            Whether the buffer was registered; if not, fill it the ordinary way.
        """
        fd = self._ensure()
        if fd < 0 or addr % PAGE or size % PAGE:
            return False
        reg = _Register(_Range(addr, size), _MODE_MISSING, 0)
        if _libc.ioctl(fd, _UFFDIO_REGISTER, ctypes.byref(reg)) != 0:
            log.debug("UFFDIO_REGISTER of %d bytes refused: %s", size, _strerror())
            return False
        return True

    def unregister(self, addr: int, size: int) -> None:
        """Hand a registered buffer back to ordinary memory (its missing pages read zero)."""
        if self._fd >= 0:
            _libc.ioctl(self._fd, _UFFDIO_UNREGISTER, ctypes.byref(_Range(addr, size)))

    def copy_registered(self, dst: int, src: int, n: int) -> int:
        """Copy ``n`` bytes from ``src`` into the registered, untouched range at ``dst``.

        Pages are allocated and filled whole, so ``dst`` must be page aligned and ``src``
        readable up to ``n`` rounded up to a page (both hold for page-aligned buffers and
        file mappings).

        Returns:
            Bytes copied, from the start; short where a page of the range was already there
            or the source could not be read (the caller unregisters and copies the rest).
        """
        done = self._uffd_copy(dst, src, n) if n > 0 else 0
        if done < n:
            self.fallbacks += 1
        return done

    def unregister_from(self, start: int, end: int) -> None:
        """Unregister the pages that hold ``[start, end)``, so ordinary code may fill them."""
        first = start - start % PAGE
        self.unregister(first, -(-(end - first) // PAGE) * PAGE)

    def _uffd_copy(self, dst: int, src: int, n: int) -> int:
        """Bytes copied by ``UFFDIO_COPY`` (whole pages, from the start of the range)."""
        if dst % PAGE:
            return 0
        span = -(-n // PAGE) * PAGE
        done = 0
        retries = 0
        while done < span:
            c = _Copy(dst + done, src + done, span - done, 0, 0)
            rc = _libc.ioctl(self._fd, _UFFDIO_COPY, ctypes.byref(c))
            if c.copy > 0:
                done += c.copy
            if rc == 0:
                continue
            if ctypes.get_errno() == errno.EAGAIN and retries < 100:
                retries += 1
                continue
            # EEXIST: a page of the range is already there; the caller copies the rest.
            log.debug("UFFDIO_COPY stopped after %d of %d bytes: %s", done, span, _strerror())
            break
        return min(done, n)

    def close(self) -> None:
        """Release the userfaultfd (``register`` refuses every buffer after this)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
            self._opened = True


class Fill(enum.Enum):
    """How a reader fills a tensor's own, fresh memory."""

    READ = "read"  # read straight into it (O_DIRECT, or a copy by the kernel)
    MAPPED = "mapped"  # a file in the page cache: copy out of a mapping of it
    COPY = "copy"  # a file on tmpfs: read a piece at a time into a small buffer, then copy
    BOUNCE = "bounce"  # O_DIRECT into a reused huge-page staging buffer, then copy


# Pieces of a copy from memory go through a buffer this size, which stays in the CPU cache.
_PIECE = 1 << 20


def fresh_fills(copy: bool, cpu: bool, distributed: bool) -> bool:
    """Whether a pass fills its tensors' own memory through ``OwnFill`` (which copies each
    chunk after reading it): owned CPU tensors in 4 KiB pages, outside a process group, where
    other ranks' bytes arrive by a collective straight into the destination."""
    return copy and cpu and not distributed and not HUGE_DESTINATIONS


class OwnFill:
    """Chooses, for one pass, how each tensor's own memory is filled, and fills it.

    Used only for fresh destinations in 4 KiB pages (``enabled``); elsewhere every request
    is read straight into its destination.  Each way below ends in ``UFFDIO_COPY``, so no
    destination page is zeroed or faulted.

    - A file in the page cache (backend ``buffered``, which maps it) is copied out of the
      mapping, one request at a time, and the request's source pages are unmapped again.
      The page cache of ext4 and xfs holds large folios, mapped a folio at a time: measured
      1.20x faster than the small-buffer copy below (4.45 GB, warm, 4 repetitions).
    - A file on tmpfs (backend ``mmap``) is read a piece at a time into a small buffer of the
      reader thread's, which stays in the CPU cache, and copied from there: tmpfs holds 4 KiB
      pages, each mapped on its own, and this measured 1.11x faster than copying out of a
      mapping (4.45 GB, 4 repetitions).
    - A file read with O_DIRECT is read into a reused huge-page staging buffer and copied
      from there: O_DIRECT into fresh 4 KiB pages is a DMA segment a page, which caps a
      virtio request at about 1 MiB, against 4 MiB into huge pages (measured 1.2-1.3 against
      1.9-2.3 GB/s, cold).
    """

    def __init__(self, filler: FreshFiller, pool: BufferPool, *, enabled: bool) -> None:
        self.filler = filler
        self.pool = pool
        self.enabled = enabled
        # Every way but READ fills a buffer registered with the filler.
        self._how: dict[int, Fill] = {}
        self._local = threading.local()

    def prepare(self, own: int, bf: BackendFile, backend: str, buf: HostBuffer) -> Fill:
        """Choose how the fresh buffer ``buf`` of tensor ``own`` is filled (before any read)."""
        how = Fill.READ
        if self.enabled and bf.mapped_address() is not None:
            how = Fill.MAPPED
        elif self.enabled and backend in ("mmap", "buffered"):
            how = Fill.COPY
        elif self.enabled and backend == "direct":
            how = Fill.BOUNCE
        if how is not Fill.READ and not self.filler.register(buf.addr, buf.size):
            how = Fill.READ
        self._how[own] = how
        return how

    def fill(
        self, r: Request, bf: BackendFile, backend: str, buf: HostBuffer, off: int
    ) -> tuple[float, float]:
        """Fill request ``r``'s part of its tensor's buffer, at ``off``.

        Returns:
            Seconds spent filling fresh memory, and seconds spent reading the file.

        Raises:
            LoaderIOError: the read failed or the file ended early.
        """
        how = self._how.get(r.own, Fill.READ)
        dst = buf.addr + off
        if how is Fill.MAPPED:
            src = bf.mapped_address()
            assert src is not None
            t0 = time.perf_counter()
            populate_read(src + r.offset, r.need)
            t1 = time.perf_counter()
            done = self.filler.copy_registered(dst, src + r.offset, r.need)
            if done < r.need:
                # A file cut short under the mapping would SIGBUS a user-space copy: read the
                # rest, which reports it as an error instead.
                self.filler.unregister_from(dst + done, dst + r.length)
                pread_full(
                    bf.rf.fd,
                    bf.path,
                    buf.mv[off + done : off + r.need],
                    r.offset + done,
                    r.need - done,
                )
            # Mapped, the source pages would count in this process's RSS on top of the copy.
            unmap_pages(src + r.offset, r.need)
            return time.perf_counter() - t1, t1 - t0
        if how is Fill.COPY:
            piece = self._piece()
            fill_s = read_s = 0.0
            for pos in range(0, r.need, _PIECE):
                n = min(_PIECE, r.need - pos)
                t0 = time.perf_counter()
                pread_full(bf.rf.fd, bf.path, piece.mv[:n], r.offset + pos, n)
                t1 = time.perf_counter()
                self._copy(dst + pos, piece.addr, n, dst + r.length)
                fill_s += time.perf_counter() - t1
                read_s += t1 - t0
            return fill_s, read_s
        t0 = time.perf_counter()
        if how is Fill.BOUNCE:
            staging = self.pool.try_acquire(r.length, force=True)
            assert staging is not None
            try:
                bf.read_into(staging.mv[: r.length], staging.addr, r.offset, r.need)
                t1 = time.perf_counter()
                self._copy(dst, staging.addr, r.need, dst + r.length)
                return time.perf_counter() - t1, t1 - t0
            finally:
                self.pool.release(staging)
        if _PREFAULT and backend == "direct":
            buf.prefault(off, r.length)
        t1 = time.perf_counter()
        bf.read_into(buf.mv[off : off + r.length], dst, r.offset, r.need)
        return t1 - t0, time.perf_counter() - t1

    def _piece(self) -> HostBuffer:
        piece: HostBuffer | None = getattr(self._local, "piece", None)
        if piece is None:
            piece = HostBuffer(_PIECE, huge=False)
            piece.prefault()
            self._local.piece = piece
        return piece

    def _copy(self, dst: int, src: int, n: int, end: int) -> None:
        done = self.filler.copy_registered(dst, src, n)
        if done < n:
            # The rest must be ordinary memory before a user-space copy touches it.
            self.filler.unregister_from(dst + done, end)
            ctypes.memmove(dst + done, src + done, n - done)

    def release(self, own: int, buf: HostBuffer) -> None:
        """Every range of tensor ``own`` is filled (or abandoned): back to ordinary memory."""
        if self._how.pop(own, Fill.READ) is not Fill.READ:
            self.filler.unregister(buf.addr, buf.size)
