"""FUSE passthrough: the kernel serves reads and mmap of an open file from its backing copy.

With passthrough, a file opened through the mount reads at the speed of its backing
file (a tmpfs hot copy, or the cold file on disk) and its bytes sit in the page cache
once, as the backing file's pages. The daemon only answers the open: it registers the
backing file with the kernel (``pyfuse3.passthrough_open``) and names the backing id in
its reply.

The kernel's rules shape this module:
- an inode has one backing file at a time; an open naming another one fails with EIO.
  So every open of an inode shares one registration while any handle is open, and the
  best copy is chosen again only once the last one closes;
- all open files of an inode use the same read mode (passthrough or the page cache of
  the FUSE inode), or the open fails with EIO. An inode whose registration failed is
  served by the daemon until its last handle closes;
- ``keep_cache`` must be off with a backing id, or every open fails with EIO;
- registering needs CAP_SYS_ADMIN, a kernel that offered passthrough at FUSE init, and
  no writeback cache; a backing file on a stacked file system (another passthrough FUSE
  mount) is refused with ELOOP.

Where passthrough cannot be used the daemon serves reads itself (`tierfs.fuse.readpath`),
and the reason is logged once.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from enum import StrEnum

import pyfuse3

from tierfs.storage.backing import Backing

log = logging.getLogger(__name__)

CAP_SYS_ADMIN = 21
MIN_LIBFUSE = 317  # 3.17, as libfuse's fuse_version() spells it
OFF_REASON = '[read] passthrough = "off" in the config'
KERNEL_REASON = (
    "the kernel did not offer FUSE passthrough "
    "(it needs Linux >= 6.9 built with CONFIG_FUSE_PASSTHROUGH)"
)


class ReadMode(StrEnum):
    """How the mount serves reads."""

    PASSTHROUGH = "passthrough"
    DAEMON = "daemon"


@dataclass(frozen=True)
class ReadModeInfo:
    """The mount's read mode and, when it is not passthrough, why."""

    mode: ReadMode
    reason: str


def _has_cap_sys_admin() -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def libfuse_version() -> int | None:
    """The version of the libfuse this process loaded (317 for 3.17), if it can tell."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        paths = {line.split()[-1] for line in f if "libfuse3.so" in line}
    for path in sorted(paths):
        try:
            return int(ctypes.CDLL(path).fuse_version())
        except (OSError, AttributeError):
            continue
    return None


def unavailable_reason(*, writeback_cache: bool) -> str | None:
    """Why passthrough cannot work in this process, as far as is known before mounting.

    Whether the kernel offers it is only known after the FUSE handshake
    (`pyfuse3.passthrough_active`).
    """
    if not hasattr(pyfuse3, "passthrough_open"):
        return "this pyfuse3 has no passthrough API (run scripts/setup to build the patched one)"
    version = libfuse_version()
    if version is not None and version < MIN_LIBFUSE:
        return f"libfuse {version // 100}.{version % 100} is older than 3.17"
    if not _has_cap_sys_admin():
        return "the daemon lacks CAP_SYS_ADMIN, which the kernel requires for passthrough"
    if writeback_cache:
        return "the writeback cache is on, and the kernel disables passthrough with it"
    return None


def mode_before_mount(setting: str, *, writeback_cache: bool) -> ReadModeInfo:
    """The read mode `[read] passthrough = setting` allows before mounting.

    PASSTHROUGH here means: ask the kernel for it at FUSE init (`mode_after_init`).
    """
    if setting == "off":
        return ReadModeInfo(ReadMode.DAEMON, OFF_REASON)
    reason = unavailable_reason(writeback_cache=writeback_cache)
    if reason is not None:
        return ReadModeInfo(ReadMode.DAEMON, reason)
    return ReadModeInfo(ReadMode.PASSTHROUGH, "")


def mode_after_init(planned: ReadModeInfo) -> ReadModeInfo:
    """The read mode once the kernel has answered FUSE init."""
    if planned.mode is ReadMode.PASSTHROUGH and not pyfuse3.passthrough_active():
        return ReadModeInfo(ReadMode.DAEMON, KERNEL_REASON)
    return planned


@dataclass
class SharedBacking:
    """The one backing registration of an inode, shared by its open handles."""

    backing_id: int
    backing: Backing
    handles: int = 1


class BackingRegistry:
    """Backing ids per inode: registered on an inode's first open, released on its last close.

    Callers serialize opens of one inode, so two opens never register two backings.
    """

    def __init__(self) -> None:
        self._inodes: dict[int, SharedBacking] = {}
        self._refusals_logged: set[int] = set()

    def join(self, inode: int) -> SharedBacking | None:
        """The registration that open handles of `inode` use, counting one more handle."""
        shared = self._inodes.get(inode)
        if shared is not None:
            shared.handles += 1
        return shared

    def register(self, fd: int, backing: Backing) -> int | None:
        """Register `fd` with the kernel (blocking: run it on a worker thread).

        Returns:
            The backing id, or None if the kernel refused: that file is then served by
            the daemon, and the reason is logged once per errno.
        """
        try:
            return int(pyfuse3.passthrough_open(fd))
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code not in self._refusals_logged:
                self._refusals_logged.add(code)
                log.warning(
                    "passthrough refused for %s (%s); such files are served by the daemon",
                    backing.path,
                    os.strerror(code),
                )
            else:
                log.debug("passthrough refused for %s: %s", backing.path, exc)
            return None

    def add(self, inode: int, backing_id: int, backing: Backing) -> SharedBacking:
        shared = SharedBacking(backing_id, backing)
        self._inodes[inode] = shared
        return shared

    def leave(self, inode: int) -> int | None:
        """Count a closed handle; returns the backing id to close once none is left."""
        shared = self._inodes.get(inode)
        if shared is None:
            return None
        shared.handles -= 1
        if shared.handles > 0:
            return None
        del self._inodes[inode]
        return shared.backing_id

    @staticmethod
    def close(backing_id: int) -> None:
        """Release a backing id (blocking: it may drop the last reference to a big file)."""
        try:
            pyfuse3.passthrough_close(backing_id)
        except OSError as exc:
            log.warning("releasing passthrough backing %d failed: %s", backing_id, exc)


def _kernel_offers_passthrough() -> bool | None:
    """Whether this kernel has FUSE passthrough built in; None if it cannot tell."""
    try:
        with open("/proc/kallsyms", encoding="ascii", errors="replace") as f:
            return any(line.endswith(" fuse_passthrough_open\n") for line in f)
    except OSError:
        return None


def describe_machine() -> str:
    """One line for scripts/setup: the read mode a mount here gets with the default config."""
    reason = unavailable_reason(writeback_cache=False)
    if reason is None:
        offered = _kernel_offers_passthrough()
        if offered is False:
            reason = KERNEL_REASON
        elif offered is None:
            return "read mode: passthrough if the kernel offers it (checked at mount)"
    if reason is not None:
        return f"read mode: served by the daemon, because {reason}"
    version = libfuse_version() or 0
    return (
        f"read mode: passthrough (libfuse {version // 100}.{version % 100}, "
        f"kernel {os.uname().release}, CAP_SYS_ADMIN)"
    )


if __name__ == "__main__":
    print(describe_machine())
