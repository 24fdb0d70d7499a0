"""The read path: open handles on backing copies, reads, and optional page-cache prefetch.

Where FUSE passthrough works (`tierfs.fuse.passthrough`), an open only registers its backing
copy with the kernel, which then serves reads and mmap itself; none of the rest of this
module is involved. What follows is the daemon-served path, for the files and machines
where passthrough cannot be used.

Every request the kernel sends costs a round trip through Python, so requests are served
by worker threads, several in flight, and the mount's readahead is raised so that they
are large (1 MiB).

Optionally (``[read] prefetch_window``), tierfs also reads ahead of a forward reader
itself, in large chunks on worker threads, and pushes those bytes into the kernel's page
cache of the FUSE inode (``notify_store``), so the reader's next requests never reach the
daemon. On Linux 6.18 the kernel's own readahead measured as fast or faster, so this is off
by default; it remains for kernels where it measures better.

Pushing only ever stores the bytes of an immutable backing copy at their own offsets, so
it can never make a reader see something other than the file's content. Pushes run on
threads other than the trio thread: the kernel may wait on a page lock held by a read
that the trio thread is about to answer.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tierfs.config import ReadConfig
from tierfs.errors import BackingIOError
from tierfs.faults import pause_point
from tierfs.fuse.passthrough import BackingRegistry
from tierfs.storage.backing import Backing

log = logging.getLogger(__name__)

PAGE = 4096

# (inode, offset, data); data is any contiguous buffer, as pyfuse3.notify_store takes.
PushFn = Callable[[int, int, Any], None]


@dataclass
class OpenFile:
    """An open handle. It keeps its backing fd until release, whatever the mover does."""

    fh: int
    inode: int
    fd: int  # -1 for a passthrough handle: the kernel holds the backing file
    backing: Backing
    size: int
    bytes_read: int = 0
    backing_id: int = 0  # > 0: the kernel serves this handle (passthrough)


@dataclass
class _Stream:
    """Prefetch state of one inode, shared by all its readers (they share the cache)."""

    inode: int
    path: Path
    size: int
    # Everything below `claimed` has been pushed or is being pushed.
    claimed: int = 0
    target: int = 0
    start: int = 0
    workers: int = 0
    handles: int = 0
    disabled: bool = False
    buffers: list[bytearray] = field(default_factory=list)


@dataclass
class ReadStats:
    """Counters of the read path; the loader's bypass test reads `read_bytes`."""

    read_requests: int = 0
    read_bytes: int = 0
    pushed_bytes: int = 0
    opens: int = 0
    passthrough_opens: int = 0
    daemon_opens: int = 0


def _open_backing(path: Path) -> int:
    pause_point("backing_open")
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _align_down(n: int) -> int:
    return n - n % PAGE


class ReadPath:
    """Open files and serve reads, never blocking the trio thread.

    Args:
        config: read-path tuning.
        push: stores bytes in the kernel page cache of an inode (``pyfuse3.notify_store``
            in the daemon); None disables prefetch.
    """

    def __init__(self, config: ReadConfig, push: PushFn | None) -> None:
        self.config = config
        self.stats = ReadStats()
        self._push = push
        # Set once the kernel has accepted passthrough (see `enable_passthrough`).
        self._passthrough: BackingRegistry | None = None
        # Opens of one inode are serialized: they must agree on one backing and one mode.
        self._open_locks: dict[int, trio.Lock] = {}
        self._daemon_handles: dict[int, int] = {}
        self._io_limiter = trio.CapacityLimiter(config.io_threads)
        # Separate threads for pushes: a push may wait on a page that a read holds.
        self._push_limiter = trio.CapacityLimiter(max(2, config.io_threads // 2))
        self._handles: dict[int, OpenFile] = {}
        self._streams: dict[int, _Stream] = {}
        self._next_fh = 1
        self._nursery: trio.Nursery | None = None
        self._push_error_logged = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the prefetch tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    def enable_passthrough(self, registry: BackingRegistry) -> None:
        """Serve new opens by passthrough where the kernel accepts their backing file."""
        self._passthrough = registry

    async def open(self, inode: int, backing: Backing, size: int) -> OpenFile:
        """Open a backing copy for reading, by passthrough where possible.

        While an inode has open handles, a new open shares their passthrough backing
        (whatever `backing` says), or is served by the daemon like them.

        Raises:
            BackingIOError: the backing file cannot be opened.
        """
        lock = self._open_locks.setdefault(inode, trio.Lock())
        try:
            async with lock:
                return await self._open_locked(inode, backing, size)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._open_locks.pop(inode, None)

    async def _open_locked(self, inode: int, backing: Backing, size: int) -> OpenFile:
        registry = self._passthrough
        if registry is not None and not self._daemon_handles.get(inode):
            shared = registry.join(inode)
            if shared is not None:
                return self._add(inode, -1, shared.backing, size, shared.backing_id)
            fd = await self._open_fd(backing)
            backing_id = await trio.to_thread.run_sync(
                registry.register, fd, backing, limiter=self._io_limiter
            )
            if backing_id is not None:
                registry.add(inode, backing_id, backing)
                # The kernel holds its own reference to the backing file now.
                await trio.to_thread.run_sync(os.close, fd, limiter=self._io_limiter)
                return self._add(inode, -1, backing, size, backing_id)
        else:
            fd = await self._open_fd(backing)
        handle = self._add(inode, fd, backing, size, 0)
        self._daemon_handles[inode] = self._daemon_handles.get(inode, 0) + 1
        stream = self._streams.get(inode)
        if stream is None or stream.path != backing.path:
            stream = _Stream(inode=inode, path=backing.path, size=size)
            if inode in self._streams:
                stream.handles = self._streams[inode].handles
            self._streams[inode] = stream
        stream.handles += 1
        return handle

    async def _open_fd(self, backing: Backing) -> int:
        try:
            return await trio.to_thread.run_sync(
                _open_backing, backing.path, limiter=self._io_limiter
            )
        except OSError as exc:
            raise BackingIOError(
                f"cannot open {backing.path} on {backing.tier}: {exc.strerror}",
                path=str(backing.path),
                errno=exc.errno or errno.EIO,
            ) from None

    def _add(self, inode: int, fd: int, backing: Backing, size: int, backing_id: int) -> OpenFile:
        fh = self._next_fh
        self._next_fh += 1
        handle = OpenFile(
            fh=fh, inode=inode, fd=fd, backing=backing, size=size, backing_id=backing_id
        )
        self._handles[fh] = handle
        self.stats.opens += 1
        if backing_id:
            self.stats.passthrough_opens += 1
        else:
            self.stats.daemon_opens += 1
        return handle

    def handle(self, fh: int) -> OpenFile:
        try:
            return self._handles[fh]
        except KeyError:
            raise BackingIOError(f"no open handle {fh}", errno=errno.EBADF) from None

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Read from a handle's backing copy.

        Raises:
            BackingIOError: the backing read failed.
        """
        handle = self.handle(fh)
        self.stats.read_requests += 1
        self._note_read(handle, offset, offset + size)
        try:
            data = await trio.to_thread.run_sync(
                os.pread, handle.fd, size, offset, limiter=self._io_limiter
            )
        except OSError as exc:
            raise BackingIOError(
                f"read of {handle.backing.path} at {offset} failed: {exc.strerror}",
                path=str(handle.backing.path),
                errno=exc.errno or errno.EIO,
            ) from None
        # A short read inside the size presented at open means the backing file shrank
        # underneath (only a cold file can). The kernel would fill the rest with zeros
        # that never were in the file: a clean EIO is the only honest answer.
        if len(data) < min(size, handle.size - offset):
            raise BackingIOError(
                f"{handle.backing.path} ended at {offset + len(data)}, short of the "
                f"{handle.size} bytes presented: it was truncated underneath",
                path=str(handle.backing.path),
                errno=errno.EIO,
            )
        handle.bytes_read += len(data)
        self.stats.read_bytes += len(data)
        return data

    async def release(self, fh: int) -> OpenFile:
        """Close a handle; returns it so the caller can account its reads."""
        handle = self._handles.pop(fh)
        if handle.backing_id:
            assert self._passthrough is not None
            last = self._passthrough.leave(handle.inode)
            if last is not None:
                await trio.to_thread.run_sync(self._passthrough.close, last)
            return handle
        remaining = self._daemon_handles.get(handle.inode, 0) - 1
        if remaining > 0:
            self._daemon_handles[handle.inode] = remaining
        else:
            self._daemon_handles.pop(handle.inode, None)
        stream = self._streams.get(handle.inode)
        if stream is not None and stream.path == handle.backing.path:
            stream.handles -= 1
            if stream.handles <= 0:
                stream.target = stream.claimed  # workers stop after their current chunk
                del self._streams[handle.inode]
        await trio.to_thread.run_sync(os.close, handle.fd, limiter=self._io_limiter)
        return handle

    def forget_inode(self, inode: int) -> None:
        """Stop prefetching an inode, e.g. because its cold file changed."""
        stream = self._streams.pop(inode, None)
        if stream is not None:
            stream.disabled = True

    # Prefetch --------------------------------------------------------------------------

    def _note_read(self, handle: OpenFile, offset: int, end: int) -> None:
        if self._push is None or self._nursery is None:
            return
        stream = self._streams.get(handle.inode)
        if stream is None or stream.disabled or stream.path != handle.backing.path:
            return
        window = self.config.prefetch_window
        if stream.start <= offset <= stream.claimed + window:
            # A forward reader: keep the pushed region one window ahead of it.
            stream.claimed = max(stream.claimed, _align_down(end))
        else:
            # A jump (random access): start a new run here rather than push bytes
            # this reader may never want.
            stream.start = _align_down(offset)
            stream.claimed = _align_down(end)
        stream.target = min(stream.size, end + window)
        depth = 2
        while stream.workers < depth and stream.claimed < stream.target:
            stream.workers += 1
            self._nursery.start_soon(self._push_worker, stream)

    async def _push_worker(self, stream: _Stream) -> None:
        chunk = self.config.prefetch_chunk
        buffer = stream.buffers.pop() if stream.buffers else bytearray(chunk)
        fd = -1
        try:
            fd = await trio.to_thread.run_sync(
                os.open, stream.path, os.O_RDONLY | os.O_CLOEXEC, limiter=self._push_limiter
            )
            while not stream.disabled and stream.claimed < stream.target:
                offset = stream.claimed
                length = min(chunk, stream.size - offset)
                if length <= 0:
                    break
                stream.claimed = offset + length
                pushed = await trio.to_thread.run_sync(
                    self._push_chunk,
                    fd,
                    stream.inode,
                    offset,
                    length,
                    buffer,
                    limiter=self._push_limiter,
                )
                self.stats.pushed_bytes += pushed
                if pushed < length:
                    break
        except OSError as exc:
            stream.disabled = True
            self._log_push_error(exc)
        finally:
            stream.workers -= 1
            stream.buffers.append(buffer)
            if fd >= 0:
                await trio.to_thread.run_sync(os.close, fd)

    def _push_chunk(self, fd: int, inode: int, offset: int, length: int, buffer: bytearray) -> int:
        assert self._push is not None
        view = memoryview(buffer)[:length]
        got = os.preadv(fd, [view], offset)
        if got:
            self._push(inode, offset, view[:got])
        return got

    def _log_push_error(self, exc: OSError) -> None:
        # ENOENT: the kernel already forgot the inode; nothing to warm.
        if exc.errno == errno.ENOENT or self._push_error_logged:
            return
        self._push_error_logged = True
        log.warning("page-cache prefetch failed (%s); reads continue without it", exc)
