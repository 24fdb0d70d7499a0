"""Storage events: the one published way news travels between the parts of a mount.

The replica registry (`tierfs.storage.placement`) publishes what it sees: an open, a cold
file that changed underneath, a copy withdrawn because its bytes were wrong. Whoever must
act on them subscribes once and handles them in its own task: the mover (promotion on
open, removal of a changed file's copies), the FUSE boundary (dropping the kernel's pages
of a withdrawn copy). Nobody plants a callback into another object, and nothing a handler
does runs inside the publisher's call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from tierfs.namespace.merge import Node
from tierfs.storage.backing import FileKey

log = logging.getLogger(__name__)

# Events a subscriber may have waiting. Only hints (`FileOpened`) are ever dropped when a
# subscriber lags this far behind; the others wait for room.
EVENT_BUFFER = 1024


@dataclass(frozen=True)
class FileOpened:
    """A file was opened through the mount (a hint: dropped if nobody keeps up)."""

    node: Node


@dataclass(frozen=True)
class ColdChanged:
    """A cold file changed underneath; the registry already stopped serving its copies."""

    key: FileKey


@dataclass(frozen=True)
class CopyWithdrawn:
    """A hot copy whose bytes were wrong stopped serving; pages cached from it are stale."""

    key: FileKey


@dataclass(frozen=True)
class _Barrier:
    """Handled by `consume` itself: tells the publisher its subscriber got this far."""

    reached: trio.Event = field(default_factory=trio.Event)


StorageEvent = FileOpened | ColdChanged | CopyWithdrawn


@dataclass
class _Subscriber:
    kinds: tuple[type[StorageEvent], ...]
    send: trio.MemorySendChannel[StorageEvent | _Barrier]


class StorageEvents:
    """Publish storage events to the subscribers that asked for their kind."""

    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []

    def subscribe(
        self, *kinds: type[StorageEvent]
    ) -> trio.MemoryReceiveChannel[StorageEvent | _Barrier]:
        """A channel of the events of `kinds` published from now on; read it with `consume`."""
        send, receive = trio.open_memory_channel[StorageEvent | _Barrier](EVENT_BUFFER)
        self._subscribers.append(_Subscriber(kinds, send))
        return receive

    async def publish(self, event: StorageEvent) -> None:
        """Deliver an event to its subscribers, waiting for room where one lags."""
        for sub in self._live(event):
            try:
                await sub.send.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)

    def hint(self, event: StorageEvent) -> None:
        """Deliver an event without waiting; a subscriber with no room misses it."""
        for sub in self._live(event):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                log.debug("a subscriber lags; dropped %s", event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)

    async def settled(self, *kinds: type[StorageEvent]) -> None:
        """Return once every subscriber (to any of `kinds`, if given) has handled all that
        was published before."""
        barriers = []
        for sub in list(self._subscribers):
            if kinds and not set(kinds) & set(sub.kinds):
                continue
            barrier = _Barrier()
            try:
                await sub.send.send(barrier)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)
                continue
            barriers.append(barrier)
        for barrier in barriers:
            await barrier.reached.wait()

    def _live(self, event: StorageEvent) -> list[_Subscriber]:
        return [s for s in self._subscribers if isinstance(event, s.kinds)]


async def consume(
    channel: trio.MemoryReceiveChannel[StorageEvent | _Barrier],
    handle: Callable[[StorageEvent], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Handle a subscription's events one by one, in order, until cancelled."""
    async with channel:
        task_status.started()
        async for event in channel:
            if isinstance(event, _Barrier):
                event.reached.set()
            else:
                await handle(event)
