"""What the FUSE boundary tells the kernel about its caches.

`PyfuseKernel` sends the notifications through pyfuse3's session; the in-process harness
(tests/integration/stack.py) passes its own recorder instead, since there is no kernel.
"""

from __future__ import annotations

import os
from typing import Protocol

import pyfuse3


class KernelCache(Protocol):
    """The kernel's caches of names, attributes and pages of a mount."""

    def forget_entry(self, parent_inode: int, name: str) -> None:
        """Drop a cached name (non-blocking)."""

    def forget_inode(self, inode: int) -> None:
        """Drop an inode's cached attributes and pages (blocking: call on a worker thread).

        Raises:
            OSError: ENOENT when the kernel no longer knows the inode.
        """


class PyfuseKernel:
    """The kernel's caches, reached through pyfuse3's session."""

    def forget_entry(self, parent_inode: int, name: str) -> None:
        # A plain invalidation, not a delete notification: the kernel refuses the latter
        # (ENOTEMPTY) for a directory whose children it still caches.
        pyfuse3.invalidate_entry_async(parent_inode, os.fsencode(name), ignore_enoent=True)

    def forget_inode(self, inode: int) -> None:
        pyfuse3.invalidate_inode(inode, False)
