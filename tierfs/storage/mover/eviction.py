"""Eviction: the space arithmetic of a tier, and taking hot copies away.

A tier's capacity is the smaller of its configured size and what its file system still
holds; a tier "has room" for a model while its claimed bytes plus the model stay under
the high watermark. Making room demotes the least recently used unpinned models down to
the low watermark. With ``move_down`` (the fill-first strategy) an evicted copy first
moves to the next slower tier that has room, by a verified tier-to-tier copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from tierfs.config import format_size
from tierfs.faults import pause_point
from tierfs.namespace.models import Model
from tierfs.storage.backing import Backing, FileKey
from tierfs.storage.mover.context import ModelFile, MoverContext
from tierfs.storage.mover.jobs import JobBook
from tierfs.storage.mover.pins import Pins
from tierfs.storage.mover.transfer import copy_claimed
from tierfs.storage.records import Replica, ReplicaState
from tierfs.storage.tiers import Tier, unlink_quietly

log = logging.getLogger(__name__)


class Evictor:
    """Space decisions and demotions of one mount.

    Args:
        ctx: the mover's shared parts.
        jobs: promotions running (their models are never evicted).
        pins: pinned models (never evicted either).
        copy_limiter: bounds the copies of fill-first moves, with the promotions'.
    """

    def __init__(
        self, ctx: MoverContext, jobs: JobBook, pins: Pins, copy_limiter: trio.CapacityLimiter
    ) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.pins = pins
        self.copy_limiter = copy_limiter
        self.last_demoted: dict[str, float] = {}

    async def _space(self, tier: Tier) -> tuple[int, int]:
        """(bytes claimed on `tier`, its usable capacity now)."""
        used = (await self.ctx.db(self.ctx.catalog.tier_usage)).get(tier.name, 0)
        # The catalog says what we claimed; statvfs says what the file system still has.
        # A tier in a shared tmpfs (/dev/shm) may hold less than its configured size.
        free = await trio.to_thread.run_sync(tier.free_bytes)
        capacity = min(tier.capacity, used + free)
        if capacity < tier.capacity:
            log.info("tier %s: only %s free on its file system", tier.name, format_size(free))
        return used, capacity

    async def has_room(self, tier: Tier, needed: int) -> bool:
        """Whether `needed` bytes fit on `tier` now, under its high watermark."""
        used, capacity = await self._space(tier)
        return used + needed <= capacity * self.ctx.config.policy.high_watermark

    async def make_room(
        self, tier: Tier, needed: int, *, protect: str, move_down: bool = False
    ) -> bool:
        """Evict LRU unpinned models from `tier` until `needed` bytes fit.

        Called with the space lock held. Eviction starts above the high watermark and
        goes down to the low one; nothing is evicted for a model that cannot fit anyway.

        Args:
            tier: where the bytes must fit.
            needed: how many.
            protect: the model being placed (never its own victim).
            move_down: move each victim to a slower tier with room instead of dropping it.
        """
        policy = self.ctx.config.policy
        used, capacity = await self._space(tier)
        if used + needed <= capacity * policy.high_watermark:
            return True
        target = capacity * policy.low_watermark
        if needed > capacity:
            return False
        pins = await self.pins.all()
        victims = await self.eviction_order(tier, exclude={protect, *pins})
        if used - await self.reclaimable(tier, victims, pins) + needed > capacity:
            return False  # hopeless even with every victim gone: evict nothing for it
        for victim in victims:
            if used + needed <= target:
                break
            if move_down:
                await self._move_down(victim, tier)
            freed = await self.demote_files(victim, tier=tier, reason="evicted")
            if freed:
                log.info(
                    "evicted %s from %s (%s) to make room for %s",
                    victim.name,
                    tier.name,
                    format_size(freed),
                    protect,
                )
                used -= freed
                free = await trio.to_thread.run_sync(tier.free_bytes)
                capacity = min(tier.capacity, used + free)
        return used + needed <= capacity

    async def reclaimable(
        self, tier: Tier, victims: list[Model], pins: dict[str, str | None]
    ) -> int:
        """Bytes that demoting every victim from `tier` would free (see `demote_files`)."""
        keep = await self.pins.kept_files(pins, besides=None)
        counted: set[int] = set()
        total = 0
        for victim in victims:
            for relpath in victim.files:
                if relpath in keep:
                    continue
                record = await self.ctx.db(self.ctx.catalog.file_by_path, *self.ctx.key_of(relpath))
                if record is None or record.id in counted:
                    continue
                counted.add(record.id)
                for replica in await self.ctx.db(self.ctx.catalog.replicas, record.id):
                    if replica.tier == tier.name and replica.state is not ReplicaState.COPYING:
                        total += replica.size
        return total

    async def eviction_order(self, tier: Tier, exclude: set[str]) -> list[Model]:
        """Models with bytes on `tier`, least recently used first."""
        inventory = await self.ctx.inventory()
        replicas = await self.ctx.db(self.ctx.catalog.replicas)
        on_tier = {r.file_id for r in replicas if r.tier == tier.name}
        by_key = {(r.store, r.relpath): r for r in await self.ctx.db(self.ctx.catalog.files)}
        scored = []
        for model in inventory.models:
            if model.name in exclude or model.name in self.jobs.active:
                continue
            keys = [self.ctx.key_of(relpath) for relpath in model.files]
            ids = [by_key[k].id for k in keys if k in by_key]
            if not any(i in on_tier for i in ids):
                continue
            last = max((self.ctx.placement.last_access(k) for k in keys), default=0.0)
            scored.append((last, model.name, model))
        return [model for _, _, model in sorted(scored)]

    async def demote_files(self, model: Model, *, tier: Tier | None, reason: str) -> int:
        """Remove a model's hot copies (on `tier`, or everywhere); returns the bytes freed.

        Files shared with a pinned model (Ollama blobs) stay hot.
        """
        pins = await self.pins.all()
        keep = await self.pins.kept_files(pins, besides=model.name)
        freed = 0
        for relpath in model.files:
            if relpath in keep:
                continue
            key = self.ctx.key_of(relpath)
            record = await self.ctx.db(self.ctx.catalog.file_by_path, *key)
            if record is None:
                continue
            for replica in await self.ctx.db(self.ctx.catalog.replicas, record.id):
                if tier is not None and replica.tier != tier.name:
                    continue
                if replica.state is ReplicaState.COPYING:
                    continue  # its job owns it, and was cancelled by the caller if need be
                freed += await self.evict(key, replica)
        self.last_demoted[model.name] = time.time()
        await self.ctx.db(self.ctx.catalog.note_demoted, model.name)
        log.debug("%s: %s", reason, model.name)
        return freed

    async def evict(self, key: FileKey, replica: Replica) -> int:
        """Withdraw a replica, then delete it; returns its size."""
        # New opens stop using the copy before it goes; open handles keep their fd, and
        # tmpfs keeps an unlinked file's pages until the last one closes.
        self.ctx.placement.withdraw(key, Backing(replica.tier, Path(replica.path)))
        # Marked, removed, dropped: once begun, finished even if the mount is stopping, so
        # that a clean stop leaves no demotion half-done for the next start to repair.
        with trio.CancelScope(shield=True):
            await self.ctx.db(self.ctx.catalog.begin_evict, replica.file_id, replica.tier)
            await trio.to_thread.run_sync(pause_point, "evict_marked")
            await trio.to_thread.run_sync(unlink_quietly, Path(replica.path))
            await self.ctx.db(self.ctx.catalog.drop_replica, replica.file_id, replica.tier)
        await self._serve_another(key, replica.file_id)
        return replica.size

    async def _serve_another(self, key: FileKey, file_id: int) -> None:
        """A file still hot on another tier is served from there (the fastest such copy)."""
        if self.ctx.placement.hot_backing(key) is not None:
            return
        rank = {t.name: i for i, t in enumerate(self.ctx.tiers)}
        hot = [
            r
            for r in await self.ctx.db(self.ctx.catalog.replicas, file_id)
            if r.state is ReplicaState.HOT and r.tier in rank
        ]
        record = await self.ctx.db(self.ctx.catalog.file, file_id)
        if hot and record is not None:
            best = min(hot, key=lambda r: rank[r.tier])
            self.ctx.placement.serve(record, Backing(best.tier, Path(best.path)))

    async def drop_changed(self, key: FileKey) -> None:
        """Delete the copies of a cold file that changed underneath (the catalog marked
        them ``evicting`` and the registry stopped serving them)."""
        record = await self.ctx.db(self.ctx.catalog.file_by_path, *key)
        if record is None:
            return
        for replica in await self.ctx.db(self.ctx.catalog.replicas, record.id):
            if replica.state is ReplicaState.EVICTING:
                await self.evict(key, replica)

    async def _move_down(self, victim: Model, tier: Tier) -> None:
        """Copy a victim's verified copies on `tier` to the next slower tier with room.

        Nothing is evicted there for it: a victim no slower tier can take goes to cold.
        Runs under the space lock, like the decision it serves, so that the room found on
        the slower tier is still there when the copies are claimed.
        """
        files: list[tuple[ModelFile, Replica]] = []
        for relpath in victim.files:
            node = self.ctx.namespace.resolve(relpath)
            record = await self.ctx.db(self.ctx.catalog.file_by_path, node.store, node.relpath)
            if record is None or record.xxh3 is None:
                continue
            for replica in await self.ctx.db(self.ctx.catalog.replicas, record.id):
                if replica.tier == tier.name and replica.state is ReplicaState.HOT:
                    files.append((ModelFile(node, record), replica))
        needed = sum(f.record.size for f, _ in files)
        lower: Tier | None = None
        for candidate in self.ctx.tiers[self.ctx.tiers.index(tier) + 1 :]:
            if files and await self.has_room(candidate, needed):
                lower = candidate
                break
        if lower is None:
            return
        log.info("moving %s down from %s to %s", victim.name, tier.name, lower.name)
        for f, replica in files:
            path = str(lower.hot_path(*f.key))
            if not await self.ctx.db(
                self.ctx.catalog.begin_copy, f.record.id, lower.name, path, f.record.size
            ):
                continue  # already there (or on its way)
            error = await copy_claimed(
                self.ctx,
                f,
                lower,
                source=Path(replica.path),
                limiter=self.copy_limiter,
                expected_xxh3=f.record.xxh3,
            )
            if error is not None:
                log.warning("%s stays on no faster tier than cold: %s", f.node.relpath, error)
