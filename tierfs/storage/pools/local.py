"""The steps that only a local (tmpfs) pool has: mount, unmount and resize its tmpfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import trio

from tierfs.errors import PoolError
from tierfs.storage.tiers import Tier, mount_tmpfs, remount_tmpfs
from tierfs.units import format_size

# How long a shrink waits for readers to close files it demoted: tmpfs frees an
# unlinked file's pages only at its last close, and refuses a size below its use.
RELEASE_TIMEOUT_S = 60.0
RELEASE_POLL_S = 0.2


def where(tier: Tier) -> str:
    return f"pool {tier.name!r} at {tier.root}"


async def mount(tier: Tier) -> str:
    """Mount the pool's tmpfs at its configured size, unless it is mounted already."""
    path = tier.root
    if await trio.to_thread.run_sync(os.path.ismount, path):
        return f"{path} is mounted already"
    config = tier.config
    await trio.to_thread.run_sync(lambda: path.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(
        lambda: mount_tmpfs(path, config.size, where(tier), huge=config.huge_pages)
    )
    return f"mounted a {format_size(config.size)} tmpfs at {path}"


async def unmount(tier: Tier, *, lazy: bool) -> str:
    """Unmount the pool's file system, unless it is not mounted.

    Lazy for a tmpfs: files that readers still hold open keep their pages until their
    last close, so handles keep their bytes (the kernel's passthrough backing files too).

    Raises:
        PoolError: the kernel refused.
    """
    path = tier.root
    if not await trio.to_thread.run_sync(os.path.ismount, path):
        return f"{path} is not mounted"
    argv = ["umount", *(["-l"] if lazy else []), str(path)]
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(argv, capture_output=True, text=True)
    )
    if done.returncode != 0:
        raise PoolError(f"{where(tier)}: cannot unmount: {done.stderr.strip()}", path=str(path))
    return f"unmounted {path}" + (" (open files keep their bytes until closed)" if lazy else "")


def fs_used(tier: Tier) -> int:
    """Bytes the file system holds, files deleted but still open included."""
    st = os.statvfs(tier.root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


async def wait_released(tier: Tier, size: int) -> str:
    """Wait until the tmpfs holds at most `size` bytes (readers closed demoted files).

    Raises:
        PoolError: still more after RELEASE_TIMEOUT_S; the message says how much.
    """
    used = await trio.to_thread.run_sync(fs_used, tier)
    with trio.move_on_after(RELEASE_TIMEOUT_S):
        while used > size:
            await trio.sleep(RELEASE_POLL_S)
            used = await trio.to_thread.run_sync(fs_used, tier)
    if used > size:
        raise PoolError(
            f"{where(tier)}: still holds {format_size(used)} after {RELEASE_TIMEOUT_S:.0f}s "
            f"(files demoted but held open by readers), more than {format_size(size)}",
            path=str(tier.root),
        )
    return f"the tmpfs holds {format_size(used)}"


async def remount(tier: Tier, size: int) -> str:
    """Give the tmpfs its new size."""
    await trio.to_thread.run_sync(remount_tmpfs, tier.root, size, where(tier))
    return f"the tmpfs at {tier.root} now holds {format_size(size)}"


def fs_size(path: Path) -> int:
    """Bytes the file system at `path` holds in all."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize
