"""Emptying a pool: which models leave it, in what order, and demoting them.

Models leave through the mover's public ``demote``; the catalog says what is where.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from tierfs.errors import PoolError, TierfsError
from tierfs.namespace.inventory import Inventory
from tierfs.storage.catalog import Catalog
from tierfs.storage.pools.usage import ModelUse, copies_on, models_on
from tierfs.storage.tiers import Tier
from tierfs.units import format_size

log = logging.getLogger(__name__)

# Demoting a pool's models, again while promotions that raced the close still land.
DRAIN_ROUNDS = 5


class JobView(Protocol):
    """What emptying a pool reads of a promotion job."""

    model: str
    tier: str

    @property
    def active(self) -> bool: ...


class ModelMover(Protocol):
    """The public methods of the mover (tierfs.storage.mover) used to empty a pool."""

    async def demote(self, name: str) -> int: ...

    def jobs(self) -> Sequence[JobView]: ...

    async def inventory(self, *, refresh: bool = False) -> Inventory: ...


class Emptier:
    """Demotes models off one pool at a time.

    Args:
        catalog: what is where.
        mover: demotes models (and cancels their promotions).
        flush_access: writes the reads not yet in the catalog, whose access times
            decide which models leave a shrinking pool first.
    """

    def __init__(
        self,
        catalog: Catalog,
        mover: ModelMover,
        flush_access: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.catalog = catalog
        self.mover = mover
        self._flush_access = flush_access
        self._db_limiter = trio.CapacityLimiter(1)

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db_limiter)

    async def models_on_pool(self, tier: Tier) -> list[ModelUse]:
        """The models on `tier`, least recently used first."""
        if self._flush_access is not None:
            await self._flush_access()
        inventory = await self.mover.inventory()
        return list(await self._db(models_on, self.catalog, tier.name, inventory.models))

    async def pinned_fit(self, tier: Tier, size: int) -> tuple[list[ModelUse], dict[str, Any]]:
        """The models on `tier` and the pins, once sure the pinned ones fit in `size`.

        Raises:
            PoolError: they do not (ENOSPC), naming them.
        """
        use = await self.models_on_pool(tier)
        pins = await self._db(self.catalog.pins)
        pinned = [u for u in use if u.name in pins]
        if sum(u.size for u in pinned) > size:
            names = ", ".join(u.name for u in pinned)
            raise PoolError(
                f"pool {tier.name!r} cannot shrink to {format_size(size)}: pinned "
                f"{names} hold{'s' if len(pinned) == 1 else ''} "
                f"{format_size(sum(u.size for u in pinned))} there; nothing was changed",
                errno=errno.ENOSPC,
            )
        return use, pins

    async def plan_shrink(self, tier: Tier, size: int) -> str:
        if size >= tier.config.size:
            return f"nothing leaves: {format_size(tier.config.size)} -> {format_size(size)}"
        use, pins = await self.pinned_fit(tier, size)
        # From here on, nothing new lands beyond the new size.
        tier.capacity = min(tier.capacity, size)
        used = sum(u.size for u in use)
        victims = []
        for u in use:
            if used <= size:
                break
            if u.name not in pins:
                victims.append(u.name)
                used -= u.size
        return f"demote {', '.join(victims)}" if victims else "everything fits"

    async def shrink(self, tier: Tier, size: int) -> str:
        demoted: list[str] = []
        pins = await self._db(self.catalog.pins)
        for _ in range(DRAIN_ROUNDS):
            used = (await self._db(self.catalog.tier_usage)).get(tier.name, 0)
            if used <= size:
                break
            for u in await self.models_on_pool(tier):
                if used <= size:
                    break
                if u.name not in pins:
                    used -= await self.demote(u.name)
                    demoted.append(u.name)
        used = (await self._db(self.catalog.tier_usage)).get(tier.name, 0)
        if used > size:
            raise PoolError(
                f"pool {tier.name!r}: {format_size(used)} still claimed, more than "
                f"{format_size(size)}",
                errno=errno.ENOSPC,
            )
        return f"demoted {', '.join(demoted)}" if demoted else "nothing to demote"

    async def drain(self, tier: Tier) -> str:
        demoted: set[str] = set()
        freed = 0
        for _ in range(DRAIN_ROUNDS):
            targets = [j.model for j in self.mover.jobs() if j.active and j.tier == tier.name]
            targets += [u.name for u in await self.models_on_pool(tier)]
            if not targets:
                break
            for name in dict.fromkeys(targets):
                freed += await self.demote(name)
                demoted.add(name)
        left = await self._db(copies_on, self.catalog, tier.name)
        if left:
            raise PoolError(
                f"pool {tier.name!r}: {left} copies are still there after demoting "
                f"{len(demoted)} models (files shared with a pinned model?)",
                errno=errno.EBUSY,
            )
        return f"demoted {len(demoted)} models ({format_size(freed)} freed)"

    async def demote(self, name: str) -> int:
        try:
            return await self.mover.demote(name)
        except TierfsError as exc:  # gone from the namespace meanwhile: nothing to demote
            log.info("pool: not demoting %s: %s", name, exc)
            return 0
