"""Eviction, the open-versus-evict race and prefetch, driven in-process (no mount).

The real-mount tests in tests/fuse prove the same end to end; these pin the logic down
in milliseconds, with the bytes checked by xxh3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.integration.stack import (
    MiB,
    Stack,
    cold_file,
    hot_models,
    open_file,
    promote,
    running_stack,
    stack_config,
    xxh,
)
from tierfs.fuse.readpath import OpenFile
from tierfs.storage.backing import Backing


async def open_and_read(stack: Stack, relpath: str) -> tuple[Backing, bytes]:
    """Open, read and release a file through the FUSE operations; what served it, and its bytes."""
    info = await open_file(stack, relpath)
    handle = stack.readpath.handle(info.fh)
    data = await stack.operations.read(info.fh, 0, handle.size)
    await stack.operations.release(info.fh)
    return handle.backing, data


def test_making_room_evicts_the_least_recently_opened_model_down_to_the_low_watermark(
    tmp_path: Path,
) -> None:
    # 3 MiB tier, watermarks 0.95 / 0.70: a third model of 1 MiB while 2 MiB are used
    # crosses the high mark, and eviction goes on until used + needed <= 2.1 MiB: exactly
    # one model goes, the least recently opened.
    config = stack_config(tmp_path, tier_size=3 * MiB, high_watermark=0.95, low_watermark=0.7)
    data = {
        f"{n}.safetensors": cold_file(tmp_path, f"{n}.safetensors", MiB, i)
        for i, n in enumerate("abc")
    }

    async def main() -> None:
        async with running_stack(config) as stack:
            await promote(stack, "a.safetensors")
            await promote(stack, "b.safetensors")
            # a is opened after b: b is now the least recently used.
            await open_and_read(stack, "b.safetensors")
            await trio.sleep(0.01)
            await open_and_read(stack, "a.safetensors")
            await promote(stack, "c.safetensors")
            hot = hot_models(stack)
            assert hot == {n: xxh(data[n]) for n in ("a.safetensors", "c.safetensors")}
            assert stack.catalog.tier_usage() == {"ram0": 2 * MiB}
            assert not (tmp_path / "ram0" / "hot" / "c" / "b.safetensors").exists()

    trio.run(main)


def test_a_pinned_model_is_never_evicted_and_a_model_that_cannot_fit_stays_cold(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tier_size=2 * MiB, high_watermark=1.0, low_watermark=1.0)
    cold_file(tmp_path, "pinned.safetensors", MiB + MiB // 2, 1)
    cold_file(tmp_path, "big.safetensors", MiB, 2)

    async def main() -> None:
        async with running_stack(config) as stack:
            job = await stack.mover.pin("pinned.safetensors", None)
            await job.ended.wait()
            job = await stack.mover.promote("big.safetensors", reason="command")
            await job.ended.wait()
            assert str(job.state) == "failed" and "does not fit" in (job.error or "")
            assert set(hot_models(stack)) == {"pinned.safetensors"}
            assert "big.safetensors" in stack.mover.cold_reasons()

    trio.run(main)


def test_an_open_that_races_an_eviction_falls_back_to_the_cold_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = stack_config(tmp_path)
    data = cold_file(tmp_path, "m.safetensors", MiB, 3)

    async def main() -> None:
        async with running_stack(config) as stack:
            await promote(stack, "m.safetensors")
            key = ("c", "m.safetensors")
            hot = stack.placement.hot_backing(key)
            assert hot is not None and hot.tier == "ram0"
            real_open = stack.readpath.open
            opened: list[Backing] = []

            async def open_after_eviction(inode: int, backing: Backing, size: int) -> OpenFile:
                # The eviction lands between placement's choice and the open itself.
                if not opened:
                    await stack.mover.demote("m.safetensors")
                opened.append(backing)
                return await real_open(inode, backing, size)

            monkeypatch.setattr(stack.readpath, "open", open_after_eviction)
            backing, got = await open_and_read(stack, "m.safetensors")
            assert [b.tier for b in opened] == ["ram0", "c"]
            assert backing.tier == "c"
            assert xxh(got) == xxh(data)
            assert hot_models(stack) == {}

    trio.run(main)


def test_prefetch_pushes_the_file_one_window_ahead_of_a_sequential_reader(
    tmp_path: Path,
) -> None:
    window = 512 << 10
    config = stack_config(tmp_path, read={"prefetch_window": window, "prefetch_chunk": 64 << 10})
    data = cold_file(tmp_path, "m.safetensors", 4 * MiB, 4)
    pushed: dict[int, bytes] = {}

    def push(inode: int, offset: int, chunk: Any) -> None:
        pushed[offset] = bytes(chunk)

    async def main() -> None:
        async with running_stack(config, push=push) as stack:
            info = await open_file(stack, "m.safetensors")
            request = 128 << 10
            for offset in range(0, MiB, request):
                got = await stack.operations.read(info.fh, offset, request)
                assert got == data[offset : offset + request]
            # Pushes run on worker threads; wait for them to reach the window's end.
            with trio.fail_after(30):
                while max((o + len(c) for o, c in pushed.items()), default=0) < MiB + window:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            await stack.operations.release(info.fh)

    trio.run(main)
    # Every pushed piece holds the file's own bytes; what the reader did not read itself
    # was pushed, up to exactly one window past its last byte and no further.
    covered = [(0, MiB)]
    for offset, chunk in sorted(pushed.items()):
        assert chunk == data[offset : offset + len(chunk)], f"wrong bytes pushed at {offset}"
        covered.append((offset, offset + len(chunk)))
    end = 0
    for start, stop in sorted(covered):
        assert start <= end, f"nothing pushed or read between {end} and {start}"
        end = max(end, stop)
    assert end == MiB + window
