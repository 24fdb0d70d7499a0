"""Directories tierfs trusts: its state directory and its tiers.

What lies there is served as the content of cold files, or decides what is served, so
another local user must not be able to put anything there. A directory is trusted when
it, and everything under it, belongs to the daemon's user and no one else can write it.
This is checked at every start, not only when tierfs creates the directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o700


def untrusted_entry(root: Path) -> str | None:
    """Why `root` cannot be trusted, or None when it can.

    Symlinks are not followed: a link that another user planted counts against the tree.
    """
    uid = os.geteuid()
    for path in _walk(root):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile: nothing to trust or distrust
        if st.st_uid != uid:
            return f"{path} belongs to uid {st.st_uid}, not to tierfs's user (uid {uid})"
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _walk(root: Path) -> list[str]:
    paths = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        paths.extend(os.path.join(dirpath, name) for name in (*dirnames, *filenames))
    return paths
