"""Helpers of the mount-life tests: cold trees with known bytes, other mounts stacked on a
mountpoint, and the CLI as a user runs it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import xxhash

from tests.fuse.mounting import REPO_ROOT, file_hash
from tierfs.mountinfo import mount_entry

CLI_TIMEOUT_S = 90


def tierfs_cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run this worktree's CLI in a subprocess."""
    # A wide terminal: line wrapping of piped output is tested in tests/integration/test_cli.py.
    env = {**os.environ, "COLUMNS": "500"}
    return subprocess.run(
        [sys.executable, "-m", "tierfs", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def payload(name: str, size: int = 300_000) -> bytes:
    """Deterministic, name-specific bytes that span several pages."""
    seed = xxhash.xxh3_128_digest(name.encode())
    return (seed * (size // len(seed) + 1))[:size]


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` at `path` with `mode`, making its directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Mode, mtime and content (hash, link target or "dir") of everything under `root`."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            content = file_hash(path)
        elif stat.S_ISLNK(st.st_mode):
            content = "-> " + os.readlink(path)
        else:
            content = "dir"
        out[path.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns, content)
    return out


def populate(root: Path) -> dict[str, bytes]:
    """A small cold tree (a file, an HF-ish directory, a GGUF); relpath -> bytes."""
    files = {
        "top.bin": payload("top"),
        "models/a/weights.safetensors": payload("a-weights", 1_000_000),
        "models/a/config.json": b'{"model_type": "llama"}\n',
        "models/b.gguf": payload("b", 200_000),
    }
    for rel, data in files.items():
        write_file(root / rel, data)
    return files


def super_options(mountpoint: Path) -> list[str]:
    """The options of the file system mounted on top at `mountpoint`."""
    entry = mount_entry(mountpoint)
    assert entry is not None, f"nothing is mounted at {mountpoint}"
    return entry.super_options.split(",")


@contextlib.contextmanager
def mounted(kind: str, target: Path, source: Path | None = None) -> Iterator[None]:
    """Mount a tmpfs (or bind-mount `source`) at `target`; always unmount afterwards."""
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=16m", "tierfs-test", str(target)]
    else:
        assert source is not None
        cmd = ["mount", "--bind", str(source), str(target)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)
