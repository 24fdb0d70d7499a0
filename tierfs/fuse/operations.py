"""The FUSE boundary: translate kernel requests into namespace and read-path calls.

Nothing here decides anything. Errors from the layers below arrive as `TierfsError`
and leave as ``FUSEError(errno)``; blocking work goes to worker threads.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from tierfs import xattrs
from tierfs.errors import BackingIOError, TierfsError
from tierfs.fuse.kernel import KernelCache, PyfuseKernel
from tierfs.fuse.passthrough import ReadMode, ReadModeInfo
from tierfs.fuse.readpath import OpenFile, ReadPath
from tierfs.namespace.merge import Namespace
from tierfs.namespace.nodes import ROOT_INODE, Kind, Node
from tierfs.storage.events import CopyWithdrawn, StorageEvent, consume
from tierfs.storage.placement import Placement

log = logging.getLogger(__name__)

# pyfuse3 passes xattr names as bytes.
XATTR_TIER = xattrs.XATTR_TIER.encode()
XATTR_BACKING = xattrs.XATTR_BACKING.encode()
XATTR_XXH3 = xattrs.XATTR_XXH3.encode()
XATTR_STATS = xattrs.XATTR_STATS.encode()
FILE_XATTRS = (XATTR_TIER, XATTR_BACKING, XATTR_XXH3)

# Attributes never change while served, so the kernel may keep them long; a cold file
# that changes underneath is invalidated explicitly.
ATTR_TIMEOUT = 300.0
ENTRY_TIMEOUT = 300.0
DIR_ENTRY_TIMEOUT = 5.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def _fuse_errors() -> AsyncIterator[None]:
    try:
        yield
    except TierfsError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENODATA):
            log.warning("%s", exc)
        raise pyfuse3.FUSEError(exc.errno) from None
    except OSError as exc:
        log.warning("unexpected OS error: %s", exc)
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


class TierfsOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over a namespace, a placement and a read path.

    Args:
        namespace: the merged cold namespace.
        placement: decides which copy serves new opens, and sees every open.
        readpath: open handles and reads.
        kernel: the kernel's caches (pyfuse3's session unless given).
    """

    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        namespace: Namespace,
        placement: Placement,
        readpath: ReadPath,
        kernel: KernelCache | None = None,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.placement = placement
        self.readpath = readpath
        self.kernel: KernelCache = kernel or PyfuseKernel()
        # Scans of cold directories are blocking I/O; one at a time is plenty.
        self._ns_limiter = trio.CapacityLimiter(1)
        self._dir_handles: dict[int, list[Node]] = {}
        self._next_dir_fh = 1
        # Set by the daemon once the kernel has answered FUSE init.
        self.read_mode = ReadModeInfo(ReadMode.DAEMON, "not mounted yet")

    async def _ns(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        result = await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._ns_limiter
        )
        await self._invalidate_changed()
        return result

    async def _invalidate_changed(self) -> None:
        # The kernel caches names and attributes for long; tell it what a rescan found.
        for parent, name in self.namespace.take_removed_entries():
            self.kernel.forget_entry(parent, name)
        for node in self.namespace.take_changed_files():
            await self.placement.cold_changed(node)
            await self._drop_kernel_cache(node)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Act on the storage events the FUSE boundary owes the kernel, until cancelled."""
        channel = self.placement.events.subscribe(CopyWithdrawn)
        await consume(channel, self._on_storage_event, task_status=task_status)

    async def _on_storage_event(self, event: StorageEvent) -> None:
        # Pages read from a withdrawn copy (a corrupt one, say) stay in the kernel's
        # cache, and keep_cache serves them to every later open: drop them.
        if not isinstance(event, CopyWithdrawn):
            return
        store, relpath = event.key
        try:
            # Not through `_ns`: that may publish events itself, and wait on this task.
            node = await trio.to_thread.run_sync(
                self.namespace.resolve, relpath, limiter=self._ns_limiter
            )
        except TierfsError:
            return
        if node.kind is Kind.FILE and node.store == store:
            await self._drop_kernel_cache(node)

    async def _drop_kernel_cache(self, node: Node) -> None:
        """Make the kernel forget a file's cached pages and attributes."""
        self.readpath.forget_inode(node.inode)
        try:
            # Off the trio thread: dropping pages may wait on a read it must answer.
            await trio.to_thread.run_sync(self.kernel.forget_inode, node.inode)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("invalidating %s failed: %s", node.relpath, exc)

    def entry_attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = node.attrs
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.generation = 0
        entry.entry_timeout = DIR_ENTRY_TIMEOUT if node.is_dir else ENTRY_TIMEOUT
        entry.attr_timeout = ATTR_TIMEOUT
        # The mount is read-only; presenting write bits would only invite EROFS.
        entry.st_mode = attrs.mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        entry.st_nlink = 2 if node.is_dir else 1
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = 0
        entry.st_size = attrs.size
        entry.st_blksize = 1 << 20
        entry.st_blocks = attrs.blocks
        entry.st_atime_ns = attrs.mtime_ns
        entry.st_mtime_ns = attrs.mtime_ns
        entry.st_ctime_ns = attrs.ctime_ns
        return entry

    # Metadata --------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        async with _fuse_errors():
            text = os.fsdecode(name)
            if text == ".":
                node = self.namespace.get(parent_inode)
            elif text == "..":
                node = self.namespace.get(self.namespace.get(parent_inode).parent)
            else:
                node = await self._ns(self.namespace.lookup, parent_inode, text)
            return self.entry_attributes(node)

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        async with _fuse_errors():
            return self.entry_attributes(self.namespace.get(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        async with _fuse_errors():
            node = self.namespace.get(inode)
            if node.kind is not Kind.SYMLINK or node.target is None:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return os.fsencode(node.target)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        async with _fuse_errors():
            # A listing is taken once per opendir so readdir offsets stay stable.
            children = await self._ns(self.namespace.listdir, inode)
            fh = self._next_dir_fh
            self._next_dir_fh += 1
            self._dir_handles[fh] = children
            return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._dir_handles.get(fh)
        if children is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(children)):
            child = children[index]
            if not pyfuse3.readdir_reply(
                token, os.fsencode(child.name), self.entry_attributes(child), index + 1
            ):
                break

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        bsize, blocks, free, files = await trio.to_thread.run_sync(self.namespace.stat_totals)
        data = pyfuse3.StatvfsData()
        data.f_bsize = bsize
        data.f_frsize = bsize
        data.f_blocks = blocks
        data.f_bfree = free
        data.f_bavail = free
        data.f_files = files
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only reached without default_permissions; the mount is read-only either way.
        return not mode & os.W_OK

    # Files -----------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        async with _fuse_errors():
            node = self.namespace.get(inode)
            if node.kind is not Kind.FILE:
                raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
            # A cold file rewritten in place (or replaced while its name stays cached)
            # leaves its directory's mtime alone, so no rescan sees it: re-stat it here,
            # or its old hot copy and old size would keep being served.
            await trio.to_thread.run_sync(self.namespace.refresh_file, node)
            await self._invalidate_changed()
            handle = await self._open_serving_copy(node)
            # Never direct_io: it breaks mmap(MAP_SHARED), which llama.cpp uses, and
            # would send passthrough reads back to the daemon.
            info = pyfuse3.FileInfo(fh=handle.fh, direct_io=False)
            if handle.backing_id:
                # The kernel fails a passthrough open that asks to keep the cache.
                info.keep_cache = False
                info.backing_id = handle.backing_id
            else:
                # The presented bytes never change under an inode, so pages cached by
                # an earlier open (or pushed by prefetch) stay valid.
                info.keep_cache = True
            return info

    async def _open_serving_copy(self, node: Node) -> OpenFile:
        """Open the copy that serves `node`, counted as an open by the registry.

        An eviction withdraws a hot copy before deleting it, but the open of its path runs
        on a worker thread and may come after the delete. The reader must not see that:
        the copy is chosen again, which by then is the cold file.
        """
        backing = await self.placement.opening(node)
        while True:
            try:
                return await self.readpath.open(node.inode, backing, node.attrs.size)
            except BackingIOError as exc:
                again = self.placement.serving(node)
                if exc.errno != errno.ENOENT or again == backing:
                    raise
                log.debug("%s was evicted while being opened; opening again", backing.path)
                backing = again

    async def read(self, fh: int, off: int, size: int) -> bytes:
        async with _fuse_errors():
            return await self.readpath.read(fh, off, size)

    async def release(self, fh: int) -> None:
        async with _fuse_errors():
            handle = await self.readpath.release(fh)
            node = self.namespace.get(handle.inode)
            self.placement.closed((node.store, node.relpath), handle.bytes_read)

    # Extended attributes ---------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # Only user.* names exist here. ENOTSUP rather than ENODATA tells ls, cp and
            # tar that the mount has no SELinux labels or ACLs at all, and they stop asking
            # after its first file: ls -l of a big directory made two round trips per file.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        async with _fuse_errors():
            node = self.namespace.get(inode)
            if inode == ROOT_INODE and name == XATTR_STATS:
                return json.dumps(self.stats()).encode()
            if node.kind is not Kind.FILE or name not in FILE_XATTRS:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            if name == XATTR_XXH3:
                digest = self.placement.xxh3_of(node)
                if digest is None:
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                return digest.encode()
            backing = self.placement.serving(node)
            if name == XATTR_TIER:
                return backing.tier.encode()
            return os.fsencode(str(backing.path))

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        async with _fuse_errors():
            node = self.namespace.get(inode)
            if inode == ROOT_INODE:
                return [XATTR_STATS]
            if node.kind is not Kind.FILE:
                return []
            names = [XATTR_TIER, XATTR_BACKING]
            if self.placement.xxh3_of(node) is not None:
                names.append(XATTR_XXH3)
            return names

    def stats(self) -> dict[str, Any]:
        """Counters of this mount, served as JSON on the root's ``user.tierfs.stats``."""
        s = self.readpath.stats
        return {
            "read_mode": str(self.read_mode.mode),
            "read_mode_reason": self.read_mode.reason,
            "read_requests": s.read_requests,
            "read_bytes": s.read_bytes,
            "pushed_bytes": s.pushed_bytes,
            "opens": s.opens,
            "passthrough_opens": s.passthrough_opens,
            "daemon_opens": s.daemon_opens,
            "open_handles": self.readpath.open_handles,
        }

    # Everything that would write is refused: cold storage is never written, and the
    # namespace is not a place to put things. With the "ro" mount option the kernel
    # refuses most of these itself; these answers hold even without it.
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)
