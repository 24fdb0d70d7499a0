"""The pyfuse3 passthrough patch (scripts/pyfuse3), on a real mount of a one-file fs."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fuse.mounting import REPO_ROOT, xxh
from tests.fuse.passthrough_fs import READY
from tierfs.daemon.mounting import lazy_unmount
from tierfs.mountinfo import mount_entry

SIZE = (8 << 20) + 12345

Server = Callable[..., Path]


@pytest.fixture
def backing(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "backing.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Server]:
    """Mount the one-file fs over a backing file; returns the mountpoint."""
    running: list[tuple[subprocess.Popen[str], Path]] = []

    def start(backing: Path, *flags: str) -> Path:
        mountpoint = tmp_path / f"mnt{len(running)}"
        mountpoint.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuse.passthrough_fs", mountpoint, backing, *flags],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        running.append((process, mountpoint))
        assert process.stdout is not None
        assert process.stdout.readline().strip() == READY
        return mountpoint

    yield start
    for process, mountpoint in running:
        process.terminate()
        process.wait(30)
        if mount_entry(mountpoint) is not None:
            lazy_unmount(mountpoint)


def counts(mountpoint: Path) -> dict[str, object]:
    return dict(json.loads(os.getxattr(mountpoint, "user.counts")))


def test_reads_and_mmap_bypass_the_daemon(serve: Server, backing: tuple[Path, bytes]) -> None:
    path, data = backing
    mountpoint = serve(path)
    assert counts(mountpoint)["active"] is True
    with open(mountpoint / "data", "rb", buffering=0) as f:
        assert xxh(f.read()) == xxh(data)
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert xxh(m[:]) == xxh(data)
    seen = counts(mountpoint)
    assert seen["passthrough_opens"] == 1
    assert seen["reads"] == 0


def test_open_handles_of_an_inode_share_one_backing(
    serve: Server, backing: tuple[Path, bytes]
) -> None:
    path, data = backing
    mountpoint = serve(path)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(mountpoint / "data", "rb", buffering=0)) for _ in "abc"]
        for i, f in enumerate(files):
            f.seek(i * 4096)
            assert f.read(4096) == data[i * 4096 : (i + 1) * 4096]
    # The backing id was released with the last handle, so a new open registers again.
    assert (mountpoint / "data").read_bytes() == data
    assert counts(mountpoint) == {
        "reads": 0,
        "passthrough_opens": 4,
        "refused": "",
        "active": True,
    }


def test_without_enable_passthrough_the_daemon_reads(
    serve: Server, backing: tuple[Path, bytes]
) -> None:
    path, data = backing
    mountpoint = serve(path, "--off")
    assert (mountpoint / "data").read_bytes() == data
    seen = counts(mountpoint)
    assert seen["active"] is False
    assert seen["refused"] == "EPERM"  # the kernel refuses backing files it did not grant
    assert seen["passthrough_opens"] == 0
    assert int(str(seen["reads"])) > 0


def test_keep_cache_with_a_backing_id_fails_the_open(
    serve: Server, backing: tuple[Path, bytes]
) -> None:
    # The kernel rule the patch documents on FileInfo: keep_cache must be off.
    path, _ = backing
    mountpoint = serve(path, "--keep-cache")
    with pytest.raises(OSError) as info:
        (mountpoint / "data").read_bytes()
    assert info.value.errno == 5  # EIO


def test_a_backing_file_on_a_passthrough_mount_is_refused_with_eloop(
    serve: Server, backing: tuple[Path, bytes]
) -> None:
    path, data = backing
    lower = serve(path)
    upper = serve(lower / "data")
    # The stacked file is served by the daemon instead, with the same bytes.
    assert (upper / "data").read_bytes() == data
    seen = counts(upper)
    assert seen["refused"] == "ELOOP"
    assert int(str(seen["reads"])) > 0
