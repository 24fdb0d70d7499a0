"""The identity of a cold file: what must stay the same for a hot copy to stay valid.

Size and mtime alone can be forged: a file replaced by rename after ``touch -r`` (which
``rsync -a`` can do) keeps both. The inode, the device and the ctime cannot be set by an
ordinary rewrite or rename, so they are part of the identity too. Anything else that
moves the ctime (chmod, a new hard link) merely costs a fresh copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileIdentity:
    """A cold file as it was when its hash or its hot copy was taken."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
