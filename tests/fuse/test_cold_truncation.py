"""A cold file that shrinks under an open handle: the reader gets the bytes that were
there, or EIO, never bytes that never existed."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from tests.fuse.mounting import MountFactory

MiB = 1 << 20


@pytest.mark.parametrize("new_size", [0, 3 * MiB + 123])
def test_a_cold_file_truncated_while_open_never_reads_invented_bytes(
    new_size: int, mount_factory: MountFactory, cold_store: Path
) -> None:
    """In the daemon-served mode tierfs itself must notice the shrink. With passthrough the
    kernel reads the cold file directly (a short read, or SIGBUS in a mapping): that side is
    tested in test_passthrough.py."""
    data = random.Random(3).randbytes(8 * MiB)
    (cold_store / "m").mkdir()
    (cold_store / "m" / "w.bin").write_bytes(data)
    mount = mount_factory([("cold", cold_store)], passthrough="off")
    got = bytearray()
    failure: OSError | None = None
    with open(mount.mountpoint / "m" / "w.bin", "rb", buffering=0) as f:
        got += f.read(MiB)
        os.truncate(cold_store / "m" / "w.bin", new_size)
        # Whatever the kernel read ahead must not answer for the daemon.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            while block := f.read(MiB):
                got += block
        except OSError as exc:
            failure = exc
    assert bytes(got) == data[: len(got)], "the reader got bytes that were never in the file"
    assert failure is not None, f"read {len(got)} bytes of a file cut to {new_size} without error"
    assert failure.errno == errno.EIO
    assert "truncated underneath" in mount.log_text()
