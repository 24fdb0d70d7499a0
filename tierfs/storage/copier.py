"""Copying one cold file onto a tier, verified.

The source is read with large, page-aligned O_DIRECT reads (buffered where the file
system refuses O_DIRECT), several in flight, and written to a temp file on the tier. In
file order, the source bytes are hashed, and so is each range read back from the temp
file; only when the two hashes agree is the copy made read-only and renamed into place.
A reader can therefore never see a partial or corrupted hot copy.

This module is blocking: the mover runs `copy_file` on a worker thread.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from tierfs.errors import TierfsError
from tierfs.storage.iobuf import io_buffer
from tierfs.storage.tiers import unlink_quietly

ALIGN = 4096
DEFAULT_CHUNK = 8 << 20
DEFAULT_DEPTH = 4
VERIFY_CHUNK = 8 << 20


class CopyError(TierfsError):
    """A copy failed; the temp file has been removed."""


class CopyCancelled(CopyError):
    """The copy was cancelled (demotion, shutdown, or the cold file changed)."""


class CopyVerifyError(CopyError):
    """The written copy does not hash like the source bytes."""


@dataclass(frozen=True)
class CopyResult:
    xxh3: str
    size: int


def hash_file(path: Path, chunk: int = VERIFY_CHUNK) -> str:
    """xxh3-128 of a whole file, read in large chunks into one reused buffer."""
    h = xxhash.xxh3_128()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def _open_source(source: Path) -> tuple[int, bool]:
    try:
        return os.open(source, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(source, os.O_RDONLY | os.O_CLOEXEC), False


def copy_file(
    source: Path,
    temp: Path,
    final: Path,
    *,
    expected_size: int,
    expected_xxh3: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    depth: int = DEFAULT_DEPTH,
    progress: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
    pause_hook: Callable[[str], None] | None = None,
    durable: bool = False,
) -> CopyResult:
    """Copy `source` to `final` through `temp`, verifying the copy.

    Args:
        source: the cold file.
        temp: a temp path on the tier's file system (same as `final`'s).
        final: where the hot copy goes; replaced atomically by rename.
        expected_size: the size the catalog knows; a different size means the file
            changed underneath, and the copy is refused.
        expected_xxh3: the hash the bytes must have (a copy of a hot copy is checked
            against the hash recorded when that one was made).
        chunk: bytes per read; a multiple of 4096.
        depth: reads in flight.
        progress: called with the number of bytes just copied.
        cancelled: set it to stop the copy between chunks.
        pause_hook: called with a stage name at points where a crash matters (tests
            inject faults here).
        durable: the tier is a block file system (a remote RAM disk): flush the copy to it
            before the rename, and drop its pages from the local page cache.

    Raises:
        CopyCancelled: `cancelled` was set.
        CopyVerifyError: the copy's hash differs from the source's.
        CopyError: the source changed size, or an I/O error occurred.
    """
    if chunk % ALIGN:
        raise ValueError(f"chunk {chunk} is not a multiple of {ALIGN}")
    temp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        result = _copy_and_hash(
            source, temp, expected_size, chunk, depth, progress, cancelled, pause_hook, durable
        )
        if expected_xxh3 is not None and result.xxh3 != expected_xxh3:
            raise CopyVerifyError(
                f"{source} hashes {result.xxh3}, not the recorded {expected_xxh3}",
                path=str(source),
            )
        if pause_hook:
            pause_hook("copy_written")
        os.chmod(temp, 0o444)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if pause_hook:
            pause_hook("copy_verified")
        os.rename(temp, final)
        return result
    except BaseException:
        unlink_quietly(temp)
        raise


def _copy_and_hash(
    source: Path,
    temp: Path,
    expected_size: int,
    chunk: int,
    depth: int,
    progress: Callable[[int], None] | None,
    cancelled: threading.Event | None,
    pause_hook: Callable[[str], None] | None,
    durable: bool = False,
) -> CopyResult:
    try:
        src, direct = _open_source(source)
    except OSError as exc:
        raise CopyError(
            f"cannot open {source}: {exc.strerror}", path=str(source), errno=exc.errno or 5
        ) from None
    try:
        size = os.fstat(src).st_size
        if size != expected_size:
            raise CopyError(
                f"{source} is {size} bytes, the catalog expected {expected_size}: "
                "it changed underneath",
                path=str(source),
                errno=errno.ESTALE,
            )
        dst = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if pause_hook:
                pause_hook("copy_started")
            # No fallocate up front: on tmpfs it would allocate and zero every page in
            # one thread before the first read; the workers' writes do it in parallel,
            # overlapped with the reads.
            digest = _pipeline(src, dst, size, chunk, depth, direct, progress, cancelled, source)
            if durable:
                _flush_to_tier(dst, temp)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return CopyResult(xxh3=digest, size=size)


def _flush_to_tier(fd: int, temp: Path) -> None:
    # On a block tier the bytes sit in the local page cache until written back, and a
    # write-back error only surfaces at fsync: it must, before the rename makes them hot.
    try:
        os.fsync(fd)
    except OSError as exc:
        raise CopyError(
            f"flushing {temp} to its tier failed: {exc.strerror}",
            path=str(temp),
            errno=exc.errno or errno.EIO,
        ) from None
    # The tier holds the copy now; keeping its pages here would spend the local RAM that a
    # remote tier exists to spare.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _pipeline(
    src: int,
    dst: int,
    size: int,
    chunk: int,
    depth: int,
    direct: bool,
    progress: Callable[[int], None] | None,
    cancelled: threading.Event | None,
    source: Path,
) -> str:
    """Copy with `depth` chunks in flight; hash source and copy in file order.

    Each worker reads a chunk and writes it to the temp file itself, so the expensive
    part of writing to tmpfs (touching new pages) runs in parallel. This thread then takes
    the chunks in file order, hashes the source bytes, and hashes the same range read back
    from the temp file, so verification overlaps the copy instead of following it.
    """
    source_hash = xxhash.xxh3_128()
    copy_hash = xxhash.xxh3_128()
    # Anonymous mappings are page aligned, as O_DIRECT requires, and are reused for the
    # whole copy so no fresh memory is touched per chunk.
    buffers = [io_buffer(chunk) for _ in range(depth)]
    readback = io_buffer(chunk)
    free = deque(buffers)
    inflight: deque[tuple[int, mmap.mmap, Future[int]]] = deque()
    next_offset = 0

    def read_and_write(buffer: mmap.mmap, offset: int) -> int:
        with memoryview(buffer) as view:
            total = 0
            while total < len(view):
                n = os.preadv(src, [view[total:]], offset + total)
                if n == 0:
                    break
                total += n
                if direct and total % ALIGN:
                    break  # a short O_DIRECT read means end of file
            written = 0
            while written < total:
                written += os.pwritev(dst, [view[written:total]], offset + written)
            return total

    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tierfs-copy")
    try:
        while next_offset < size or inflight:
            while free and next_offset < size:
                buffer = free.popleft()
                inflight.append(
                    (next_offset, buffer, pool.submit(read_and_write, buffer, next_offset))
                )
                next_offset += chunk
            offset, buffer, future = inflight.popleft()
            try:
                n = future.result()
            except OSError as exc:
                raise CopyError(
                    f"copy of {source} at {offset} failed: {exc.strerror}",
                    path=str(source),
                    errno=exc.errno or errno.EIO,
                ) from None
            if n != min(chunk, size - offset):
                raise CopyError(
                    f"{source} ended at {offset + n}, expected {size} bytes: it changed underneath",
                    path=str(source),
                    errno=errno.ESTALE,
                )
            with memoryview(buffer) as view, view[:n] as data:
                source_hash.update(data)
            free.append(buffer)
            with memoryview(readback) as view, view[:n] as back:
                if os.preadv(dst, [back], offset) != n:
                    raise CopyVerifyError(
                        f"copy of {source} is short at {offset}", path=str(source), errno=errno.EIO
                    )
                copy_hash.update(back)
            if progress:
                progress(n)
            if cancelled is not None and cancelled.is_set():
                raise CopyCancelled(
                    f"copy of {source} cancelled", path=str(source), errno=errno.ECANCELED
                )
    finally:
        # Let reads still in flight finish before their buffers go away.
        pool.shutdown(wait=True, cancel_futures=True)
        for buffer in [*buffers, readback]:
            buffer.close()
    if copy_hash.hexdigest() != source_hash.hexdigest():
        raise CopyVerifyError(
            f"copy of {source} hashes {copy_hash.hexdigest()}, "
            f"the source hashed {source_hash.hexdigest()}",
            path=str(source),
            errno=errno.EIO,
        )
    return source_hash.hexdigest()
