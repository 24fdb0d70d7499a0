"""The state directory: private to tierfs's user, and owned by one daemon at a time.

Two daemons on one state directory would share a catalog and a control socket, and the
second one's recovery would delete the first one's copies in flight. So a daemon holds an
exclusive lock on ``<state_dir>/lock`` for its whole life; the lock file names its PID so
that a refused start can say who holds it. The kernel drops the lock when the process
dies, ``kill -9`` included, so a crash never leaves it stuck.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from tierfs.errors import StateDirError
from tierfs.storage.trust import PRIVATE_MODE, untrusted_entry

LOCK_NAME = "lock"


class StateDir:
    """The state directory, made private and locked for as long as this object is open.

    Args:
        path: the configured ``state_dir``; created (0700) if missing.
        purpose: what holds the lock, for the PID file ("tierfs mount", "tierfs fsck").

    Raises:
        StateDirError: the directory cannot be made, another user can write it, or another
            process holds it (naming that process's PID).
    """

    def __init__(self, path: Path, purpose: str) -> None:
        self.path = path
        try:
            path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
            if path.stat().st_uid == os.geteuid():
                os.chmod(path, PRIVATE_MODE)
        except OSError as exc:
            raise StateDirError(
                f"state_dir {path}: {exc.strerror}", path=str(path), errno=exc.errno or errno.EIO
            ) from None
        problem = untrusted_entry(path)
        if problem is not None:
            raise StateDirError(
                f"state_dir {path} refused: {problem}", path=str(path), errno=errno.EPERM
            )
        lock_path = path / LOCK_NAME
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise StateDirError(
                f"state_dir {path} is in use by {holder}; stop it first, or give this "
                "mount its own state_dir",
                path=str(path),
                errno=errno.EBUSY,
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{purpose} (pid {os.getpid()})\n".encode(), 0)

    def close(self) -> None:
        """Release the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
