"""A one-file pyfuse3 file system that serves its file by passthrough, for the patch's tests.

Run as ``python -m tests.fuse.passthrough_fs MOUNTPOINT BACKING [--off] [--keep-cache]``.
The root holds one file, ``data``, whose opens register BACKING with the kernel. The
root's ``user.counts`` xattr is JSON: whether the kernel granted passthrough, the read
requests the daemon saw, and the outcome of the opens. ``--off`` does not ask for
passthrough; ``--keep-cache`` answers opens with keep_cache on, which the kernel refuses.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys

import pyfuse3
import trio

DATA_INODE = 2
READY = "ready"


class PassthroughFs(pyfuse3.Operations):
    def __init__(self, backing: str, *, passthrough: bool, keep_cache: bool) -> None:
        super().__init__()
        self.enable_passthrough = passthrough
        self.backing = backing
        self.keep_cache = keep_cache
        self.counts: dict[str, int] = {"reads": 0, "passthrough_opens": 0}
        self.refused = ""
        self.backing_id = 0
        self.handles = 0

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            entry.st_mode = stat.S_IFDIR | 0o755
        else:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_size = os.stat(self.backing).st_size
        entry.attr_timeout = entry.entry_timeout = 300
        return entry

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"data":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(DATA_INODE)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode != pyfuse3.ROOT_INODE or name != b"user.counts":
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return json.dumps(
            {**self.counts, "refused": self.refused, "active": pyfuse3.passthrough_active()}
        ).encode()

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        info = pyfuse3.FileInfo(fh=inode, keep_cache=self.keep_cache)
        if self.handles == 0:
            fd = os.open(self.backing, os.O_RDONLY)
            try:
                self.backing_id = pyfuse3.passthrough_open(fd)
            except OSError as exc:
                self.refused = errno.errorcode.get(exc.errno or 0, "?")
                self.backing_id = 0
            finally:
                os.close(fd)
        self.handles += 1
        if self.backing_id:
            info.backing_id = self.backing_id
            self.counts["passthrough_opens"] += 1
        return info

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.counts["reads"] += 1
        with open(self.backing, "rb") as f:
            f.seek(off)
            return f.read(size)

    async def release(self, fh: int) -> None:
        self.handles -= 1
        if self.handles == 0 and self.backing_id:
            pyfuse3.passthrough_close(self.backing_id)
            self.backing_id = 0


def main() -> None:
    mountpoint, backing = sys.argv[1], sys.argv[2]
    fs = PassthroughFs(
        backing, passthrough="--off" not in sys.argv, keep_cache="--keep-cache" in sys.argv
    )
    pyfuse3.init(fs, mountpoint, {"fsname=ptfs", "ro"})
    try:

        async def serve() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pyfuse3.main)
                    await trio.to_thread.run_sync(os.stat, mountpoint)
                    print(READY, flush=True)
                    async for _ in signals:
                        pyfuse3.terminate()
                        break

        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
