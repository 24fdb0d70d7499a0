"""Placement strategies with two and three tiers, driven in-process (no mount).

Tiers are plain directories with a configured capacity; every hot copy is checked by
xxh3 against its cold bytes. The real-mount proof is tests/fuse/test_tiers_strategies.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.stack import (
    MiB,
    Stack,
    cold_file,
    hot_copies,
    promote,
    read_file,
    running_stack,
    stack_config,
    tier_xattr,
    xxh,
)
from tierfs.errors import ConfigError

# Watermarks at 1.0 keep the arithmetic plain: a tier has room while its bytes fit. Only
# the tests promote: reads for the LRU must not start promotions of their own.
FULL: dict[str, Any] = {"high_watermark": 1.0, "low_watermark": 1.0, "promote_on_open": False}


def models(base: Path, names: str, size: int = MiB) -> dict[str, str]:
    """One cold model file per letter; relpath -> xxh3 of its bytes."""
    return {
        f"{n}.safetensors": xxh(cold_file(base, f"{n}.safetensors", size, i))
        for i, n in enumerate(names)
    }


def placed(stack: Stack, want: dict[str, str]) -> dict[str, str]:
    """relpath -> the one tier holding it, each copy's bytes checked against the cold file."""
    out = {}
    for relpath, copies in hot_copies(stack).items():
        assert list(copies.values()) == [want[relpath]], f"wrong bytes in {relpath}: {copies}"
        (out[relpath],) = copies
    return out


async def touch(stack: Stack, relpath: str) -> None:
    """Open and read a file through the operations: a use, for the LRU."""
    await read_file(stack, relpath)
    await trio.sleep(0.01)


def test_fastest_fit_takes_a_slower_tier_with_room_before_evicting_anything(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tiers=[2 * MiB, 3 * MiB], **FULL)
    want = models(tmp_path, "abcdef")

    async def main() -> None:
        async with running_stack(config) as stack:
            assert stack.mover.strategy == "fastest-fit"
            for name in "abcde":
                await promote(stack, f"{name}.safetensors")
            assert placed(stack, want) == {
                "a.safetensors": "ram0",
                "b.safetensors": "ram0",
                "c.safetensors": "ram1",
                "d.safetensors": "ram1",
                "e.safetensors": "ram1",
            }
            # No tier has room now: the fastest tier's LRU model (a, used before b) goes.
            await touch(stack, "a.safetensors")
            await touch(stack, "b.safetensors")
            await promote(stack, "f.safetensors")
            got = placed(stack, want)
            assert "a.safetensors" not in got and got["f.safetensors"] == "ram0"
            assert got["b.safetensors"] == "ram0"

    trio.run(main)


def test_fastest_fit_respects_the_high_watermark(tmp_path: Path) -> None:
    config = stack_config(tmp_path, tiers=[2 * MiB, 4 * MiB], high_watermark=0.5, low_watermark=0.5)
    want = models(tmp_path, "ab")

    async def main() -> None:
        async with running_stack(config) as stack:
            await promote(stack, "a.safetensors")
            await promote(stack, "b.safetensors")  # 2 MiB on ram0 would pass its 50 %
            assert placed(stack, want) == {"a.safetensors": "ram0", "b.safetensors": "ram1"}

    trio.run(main)


def test_fill_first_gives_the_newest_model_the_fastest_tier_and_moves_the_evicted_down(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tiers=[2 * MiB, 2 * MiB], strategy="fill-first", **FULL)
    want = models(tmp_path, "abcde")

    async def main() -> None:
        async with running_stack(config) as stack:
            for name in "ab":
                await promote(stack, f"{name}.safetensors")
            await touch(stack, "b.safetensors")
            await promote(stack, "c.safetensors")
            # a (least recently used) moved down to ram1 by a verified copy; c got ram0.
            assert placed(stack, want) == {
                "a.safetensors": "ram1",
                "b.safetensors": "ram0",
                "c.safetensors": "ram0",
            }
            # New opens of a are served from its copy on ram1, with its own bytes.
            _, data = await read_file(stack, "a.safetensors")
            assert xxh(data) == want["a.safetensors"]
            assert await tier_xattr(stack, "a.safetensors") == "ram1"
            await touch(stack, "c.safetensors")
            await promote(stack, "d.safetensors")  # b moves down; ram1 is then full
            await touch(stack, "d.safetensors")
            await promote(stack, "e.safetensors")  # c has no tier with room: cold
            assert placed(stack, want) == {
                "a.safetensors": "ram1",
                "b.safetensors": "ram1",
                "d.safetensors": "ram0",
                "e.safetensors": "ram0",
            }
            assert stack.catalog.tier_usage() == {"ram0": 2 * MiB, "ram1": 2 * MiB}
            # Every move went through a temp file that the rename consumed.
            assert not [p for t in stack.tiers for p in t.tmp_root.rglob("*") if p.is_file()]

    trio.run(main)


def test_fill_first_moves_an_evicted_model_past_a_full_tier_and_never_evicts_a_pin(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tiers=[2 * MiB, MiB, 2 * MiB], strategy="fill-first", **FULL)
    want = models(tmp_path, "pabc")

    async def main() -> None:
        async with running_stack(config) as stack:
            job = await stack.mover.pin("p.safetensors", None)
            await job.ended.wait()
            await promote(stack, "a.safetensors")
            await touch(stack, "a.safetensors")
            await touch(stack, "p.safetensors")  # the pin is the LRU's last, not its victim
            await promote(stack, "b.safetensors")  # a -> ram1
            await promote(stack, "c.safetensors")  # b -> ram2: ram1 is full
            assert placed(stack, want) == {
                "p.safetensors": "ram0",
                "a.safetensors": "ram1",
                "b.safetensors": "ram2",
                "c.safetensors": "ram0",
            }

    trio.run(main)


def test_round_robin_rotates_over_the_tiers_with_room(tmp_path: Path) -> None:
    config = stack_config(tmp_path, tiers=[4 * MiB, MiB, 4 * MiB], strategy="round-robin", **FULL)
    want = models(tmp_path, "abcde")

    async def main() -> None:
        async with running_stack(config) as stack:
            for name in "abcde":
                await promote(stack, f"{name}.safetensors")
            # ram1 holds one model; after that the turn skips it.
            assert placed(stack, want) == {
                "a.safetensors": "ram0",
                "b.safetensors": "ram1",
                "c.safetensors": "ram2",
                "d.safetensors": "ram0",
                "e.safetensors": "ram2",
            }

    trio.run(main)


def test_the_strategy_can_change_while_mounted_and_a_named_tier_overrides_it(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tiers=[4 * MiB, 4 * MiB], **FULL)
    want = models(tmp_path, "abc")

    async def main() -> None:
        async with running_stack(config) as stack:
            assert (await stack.control.status())["strategy"] == "fastest-fit"
            stack.mover.set_strategy("round-robin")
            assert (await stack.control.status())["strategy"] == "round-robin"
            with pytest.raises(ConfigError, match="'widest-fit'"):
                stack.mover.set_strategy("widest-fit")
            await promote(stack, "a.safetensors")
            await promote(stack, "b.safetensors")
            job = await stack.mover.promote("c.safetensors", "ram1", reason="command")
            await job.ended.wait()
            assert placed(stack, want) == {
                "a.safetensors": "ram0",
                "b.safetensors": "ram1",
                "c.safetensors": "ram1",
            }

    trio.run(main)


def test_a_file_evicted_from_one_tier_is_served_from_its_copy_on_another(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, tiers=[2 * MiB, 2 * MiB], **FULL)
    want = models(tmp_path, "abcd")

    async def main() -> None:
        async with running_stack(config) as stack:
            for tier in ("ram1", "ram0"):  # a on both tiers, by hand
                job = await stack.mover.promote("a.safetensors", tier, reason="command")
                await job.ended.wait()
            assert await tier_xattr(stack, "a.safetensors") == "ram0"
            await promote(stack, "b.safetensors")  # ram0 is full
            await promote(stack, "c.safetensors")  # ram1 is full
            await touch(stack, "b.safetensors")
            await promote(stack, "d.safetensors")  # evicts a, ram0's LRU, from ram0 only
            assert hot_copies(stack)["a.safetensors"] == {"ram1": want["a.safetensors"]}
            assert await tier_xattr(stack, "a.safetensors") == "ram1"
            _, data = await read_file(stack, "a.safetensors")
            assert xxh(data) == want["a.safetensors"]

    trio.run(main)
