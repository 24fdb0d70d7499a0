"""The storage event hub: delivery by kind, hints dropped for a laggard, and `settled`."""

from __future__ import annotations

from typing import cast

import trio
import trio.testing

from tierfs.namespace.merge import Node
from tierfs.storage.events import (
    EVENT_BUFFER,
    ColdChanged,
    CopyWithdrawn,
    FileOpened,
    StorageEvent,
    StorageEvents,
    consume,
)


def test_each_subscriber_gets_the_kinds_it_asked_for_in_order() -> None:
    async def main() -> None:
        events = StorageEvents()
        mover = events.subscribe(ColdChanged)
        fuse = events.subscribe(CopyWithdrawn)
        await events.publish(ColdChanged(("c", "a")))
        await events.publish(CopyWithdrawn(("c", "b")))
        await events.publish(ColdChanged(("c", "c")))
        got = [mover.receive_nowait(), mover.receive_nowait()]
        assert got == [ColdChanged(("c", "a")), ColdChanged(("c", "c"))]
        assert fuse.receive_nowait() == CopyWithdrawn(("c", "b"))

    trio.run(main)


def test_a_hint_is_dropped_for_a_subscriber_that_lags_and_never_blocks_the_publisher() -> None:
    async def main() -> None:
        events = StorageEvents()
        channel = events.subscribe(FileOpened)
        opened = [FileOpened(cast(Node, n)) for n in range(EVENT_BUFFER + 5)]
        for event in opened:
            events.hint(event)  # would raise WouldBlock, or block, if it waited for room
        got = [channel.receive_nowait() for _ in range(EVENT_BUFFER)]
        assert got == opened[:EVENT_BUFFER]
        assert channel.statistics().current_buffer_used == 0

    trio.run(main)


def test_settled_returns_only_once_every_subscriber_handled_what_came_before() -> None:
    handled: list[StorageEvent] = []
    gate = trio.Event()

    async def slow(event: StorageEvent) -> None:
        await gate.wait()
        handled.append(event)

    async def quick(event: StorageEvent) -> None:
        handled.append(event)

    async def main() -> None:
        events = StorageEvents()
        async with trio.open_nursery() as nursery:
            await nursery.start(consume, events.subscribe(CopyWithdrawn), slow)
            await nursery.start(consume, events.subscribe(ColdChanged), quick)
            await events.publish(CopyWithdrawn(("c", "a")))
            await events.publish(ColdChanged(("c", "b")))
            settled = trio.Event()

            async def wait_settled() -> None:
                await events.settled()
                settled.set()

            nursery.start_soon(wait_settled)
            await trio.testing.wait_all_tasks_blocked()
            assert not settled.is_set() and handled == [ColdChanged(("c", "b"))]
            # Waiting on one kind's subscribers only does not wait for the slow one.
            with trio.fail_after(5):
                await events.settled(ColdChanged)
            gate.set()
            await settled.wait()
            assert handled == [ColdChanged(("c", "b")), CopyWithdrawn(("c", "a"))]
            nursery.cancel_scope.cancel()

    trio.run(main)
