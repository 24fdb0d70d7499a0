"""Storage events, driven in-process through the FUSE operations (no mount).

A cold file changed underneath and a hot copy found corrupt by fsck each travel as one
event from the replica registry to whoever must act: the mover deletes the changed
file's copies, the FUSE boundary makes the kernel forget pages of the corrupt copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tests.integration.stack import (
    MiB,
    cold_file,
    hot_copies,
    promote,
    read_file,
    running_stack,
    stack_config,
    xxh,
)


def test_a_cold_file_changed_underneath_stops_serving_its_copy_which_the_mover_deletes(
    tmp_path: Path,
) -> None:
    # No promotion on open: the new bytes would start being copied in at once.
    config = stack_config(tmp_path, promote_on_open=False)
    old = cold_file(tmp_path, "m.safetensors", MiB, 1)

    async def main() -> None:
        async with running_stack(config) as stack:
            await promote(stack, "m.safetensors")
            assert hot_copies(stack) == {"m.safetensors": {"ram0": xxh(old)}}
            hot = tmp_path / "ram0" / "hot" / "c" / "m.safetensors"
            assert hot.exists()
            new = cold_file(tmp_path, "m.safetensors", MiB + 4096, 2)
            # The open re-stats the file, sees the change and is served the new bytes.
            _, got = await read_file(stack, "m.safetensors")
            assert xxh(got) == xxh(new)
            # Gone by the time the open that found the change is answered.
            assert hot_copies(stack) == {}
            assert stack.catalog.replicas() == []
            assert not hot.exists()
            node = stack.namespace.resolve("m.safetensors")
            assert node.inode in stack.kernel.inodes

    trio.run(main)


def test_fsck_returns_only_once_the_kernel_forgot_the_pages_of_a_corrupt_copy(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, promote_on_open=False)
    data = cold_file(tmp_path, "m.safetensors", MiB, 3)

    async def main() -> None:
        async with running_stack(config) as stack:
            await promote(stack, "m.safetensors")
            hot = tmp_path / "ram0" / "hot" / "c" / "m.safetensors"
            os.chmod(hot, 0o644)
            with open(hot, "r+b") as f:
                f.seek(4096 * 3 + 1)
                f.write(b"\xff" if data[4096 * 3 + 1] != 0xFF else b"\x00")
            _, bad = await read_file(stack, "m.safetensors")
            assert xxh(bad) != xxh(data)
            node = stack.namespace.resolve("m.safetensors")
            assert node.inode not in stack.kernel.inodes
            report = await stack.control.fsck(True)
            assert [f["path"] for f in report["findings"]] == [str(hot)], report
            # The kernel was told before fsck answered, not some time after.
            assert node.inode in stack.kernel.inodes
            _, good = await read_file(stack, "m.safetensors")
            assert xxh(good) == xxh(data)

    trio.run(main)
