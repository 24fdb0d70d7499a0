"""A minimal read-only FUSE file system that speaks the tierfs xattr contract.

It stands in for the tierfs daemon in the loader's bypass test until the real mount fixture
exists: every regular file answers ``user.tierfs.tier``, ``user.tierfs.backing`` (the path
of the same file in the backing directory) and ``user.tierfs.xxh3``; the root answers
``user.tierfs.stats`` with the daemon's FUSE read counters.

    python tests/fuse/loader_standin_fs.py BACKING_DIR MOUNTPOINT [--broken-backing]

``--broken-backing`` publishes backing paths that do not exist, to exercise the fallback
through the mount (and to show that the read counter does move when FUSE serves bytes).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys

import pyfuse3
import trio
import xxhash

log = logging.getLogger(__name__)


class StandInFs(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, backing: str, broken: bool) -> None:
        super().__init__()
        self.backing = os.path.abspath(backing)
        self.broken = broken
        self.names: dict[int, str] = {}
        self.inodes: dict[str, int] = {}
        self.hashes: dict[int, str] = {}
        for i, name in enumerate(sorted(os.listdir(self.backing))):
            ino = pyfuse3.ROOT_INODE + 1 + i
            self.names[ino] = name
            self.inodes[name] = ino
            with open(os.path.join(self.backing, name), "rb") as f:
                self.hashes[ino] = xxhash.xxh3_128_hexdigest(f.read())
        self.read_bytes = 0
        self.read_requests = 0

    def _path(self, ino: int) -> str:
        return os.path.join(self.backing, self.names[ino])

    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_size = 0
        elif inode in self.names:
            st = os.stat(self._path(inode))
            e.st_mode = stat.S_IFREG | 0o444
            e.st_size = st.st_size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e.st_ino = inode
        e.st_nlink = 1
        e.st_uid = os.getuid()
        e.st_gid = os.getgid()
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = 0
        e.attr_timeout = e.entry_timeout = 1.0
        return e

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: object = None
    ) -> pyfuse3.EntryAttributes:
        ino = self.inodes.get(name.decode())
        if parent_inode != pyfuse3.ROOT_INODE or ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(ino)

    async def opendir(self, inode: int, ctx: object) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: object) -> None:
        for ino in sorted(self.names):
            if ino <= start_id:
                continue
            attr = await self.getattr(ino)
            if not pyfuse3.readdir_reply(token, self.names[ino].encode(), attr, ino):
                return

    async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        with open(self._path(fh), "rb") as f:
            f.seek(off)
            data = f.read(size)
        self.read_bytes += len(data)
        self.read_requests += 1
        return data

    async def getxattr(self, inode: int, name: bytes, ctx: object) -> bytes:
        key = name.decode()
        if inode == pyfuse3.ROOT_INODE:
            if key == "user.tierfs.stats":
                return json.dumps(
                    {"read_bytes": self.read_bytes, "read_requests": self.read_requests}
                ).encode()
            raise pyfuse3.FUSEError(errno.ENODATA)
        if key == "user.tierfs.tier":
            return b"disk"
        if key == "user.tierfs.backing":
            path = self._path(inode)
            return (path + ".gone" if self.broken else path).encode()
        if key == "user.tierfs.xxh3":
            return self.hashes[inode].encode()
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode: int, ctx: object) -> list[bytes]:
        if inode == pyfuse3.ROOT_INODE:
            return [b"user.tierfs.stats"]
        return [b"user.tierfs.tier", b"user.tierfs.backing", b"user.tierfs.xxh3"]


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = StandInFs(backing, "--broken-backing" in sys.argv)
    options = set(pyfuse3.default_options)
    options.add("fsname=tierfs-standin")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
