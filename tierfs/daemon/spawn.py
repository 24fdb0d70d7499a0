"""Starting a daemon process and waiting until it serves.

The one owner of "start ``tierfs mount --foreground`` and wait for it": ``tierfs mount``
(detached), the FUSE test fixtures and the benchmarks all call `start_daemon`.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tierfs.daemon.mounting import SERVING, is_tierfs
from tierfs.errors import MountError
from tierfs.mountinfo import mount_entry

POLL_S = 0.05


def start_daemon(
    config_path: Path,
    mountpoint: Path,
    log_file: Path,
    *,
    timeout: float = 60.0,
    detach: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m tierfs mount --foreground`` and wait until it serves.

    Serving means the daemon logged ``serving MOUNTPOINT`` after this start and the kernel
    lists a tierfs mount there: the daemon's own word, since a stale mount is in the mount
    table too.

    Args:
        config_path: the config the daemon reads.
        mountpoint: the config's mountpoint.
        log_file: the daemon's stdout and stderr are appended here.
        timeout: seconds to wait; a daemon not serving by then is terminated.
        detach: start it in a session of its own, so it outlives the caller's terminal.
        env: the environment of the daemon (default: the caller's).
        cwd: where to run it; ``python -m tierfs`` imports the tierfs found there first.

    Returns:
        The running daemon's process.

    Raises:
        MountError: the daemon exited or did not serve in time; its last log lines are in
            the message.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = log_file.stat().st_size if log_file.exists() else 0
    ready = f"{SERVING} {mountpoint}".encode()
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tierfs", "mount", "--foreground", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=detach,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_file, "rb") as f:
            f.seek(start)
            if ready in f.read() and is_tierfs(mount_entry(mountpoint)):
                return process
        if process.poll() is not None:
            break
        time.sleep(POLL_S)
    else:
        process.terminate()
    tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
    raise MountError(
        f"the daemon did not mount {mountpoint}: " + " | ".join(tail),
        path=str(mountpoint),
        errno=errno.EIO,
    )


def spawn_daemon(config_path: Path, mountpoint: Path, log_file: Path) -> int:
    """Start a detached daemon (``tierfs mount --daemon``) and wait until it serves.

    Returns:
        The daemon's pid.

    Raises:
        MountError: as `start_daemon`.
    """
    return start_daemon(config_path, mountpoint, log_file, detach=True).pid
