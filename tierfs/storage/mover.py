"""The mover: promotes models into RAM tiers and demotes them, by command or by policy.

The unit is a model (see `tierfs.namespace.models`). Promoting it copies each of its files that is
not hot yet; making room demotes the least recently used unpinned models down to the low
watermark. Every change goes through the catalog first, so a crash leaves states that
`tierfs.ops.fsck` resolves: only replicas the catalog calls ``hot`` are ever served.

Readers are never blocked: new opens keep going to cold until a file's copy is complete,
and handles already open keep the copy they were opened on.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import trio

from tierfs.config import Config, format_size
from tierfs.errors import TierError, TierfsError
from tierfs.faults import pause_point
from tierfs.fuse.readpath import Backing
from tierfs.namespace.inventory import Inventory, take_inventory
from tierfs.namespace.merge import Kind, Namespace, Node
from tierfs.namespace.models import Model, find_model, models_by_file
from tierfs.states import JobState
from tierfs.storage.catalog import Catalog, FileRecord, Replica, ReplicaState
from tierfs.storage.copier import CopyCancelled, CopyError, copy_file
from tierfs.storage.placement import Placement
from tierfs.storage.tiers import Tier, unlink_quietly

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Finished jobs kept for `tierfs status` and the API; older ones are forgotten, so the
# history (and every status answer) stays small however long the mount runs.
JOB_HISTORY = 100


@dataclass
class Job:
    """A promotion in flight or finished, with its progress."""

    id: int
    model: str
    tier: str
    total: int
    reason: str
    state: JobState = JobState.QUEUED
    done: int = 0
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    @property
    def active(self) -> bool:
        return self.state.active

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.active else None
        return {
            "id": self.id,
            "model": self.model,
            "tier": self.tier,
            "reason": self.reason,
            "state": str(self.state),
            "bytes_done": self.done,
            "bytes_total": self.total,
            "rate": rate,
            "eta_s": eta,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


@dataclass(frozen=True)
class ModelFile:
    """A file of a model, resolved in the namespace and known to the catalog."""

    node: Node
    record: FileRecord

    @property
    def key(self) -> tuple[str, str]:
        return (self.node.store, self.node.relpath)


class Mover:
    """Owns promotions, demotions and eviction for one mount.

    Args:
        config: the mount's config (tiers and policy).
        catalog: the source of truth.
        namespace: the merged cold namespace.
        placement: told about every hot copy that becomes usable or goes away.
        tiers: the prepared tiers, fastest first.
    """

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        namespace: Namespace,
        placement: Placement,
        tiers: list[Tier],
    ) -> None:
        self.config = config
        self.policy = config.policy
        self.catalog = catalog
        self.namespace = namespace
        self.placement = placement
        self.tiers = sorted(tiers, key=lambda t: t.rank)
        self._tier_by_name = {t.name: t for t in self.tiers}
        self._jobs: dict[int, Job] = {}
        self._active: dict[str, Job] = {}
        self._job_ids = itertools.count(1)
        self._copy_limiter = trio.CapacityLimiter(self.policy.max_parallel_copies)
        self._catalog_limiter = trio.CapacityLimiter(1)
        # Space decisions (what fits, what to evict, what to claim) happen one at a time.
        self._space_lock = trio.Lock()
        self._inventory: Inventory | None = None
        self._inventory_generation = -1
        self._file_models: dict[str, tuple[str, ...]] = {}
        self._last_demoted: dict[str, float] = {}
        self._cold_reasons: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None

    # Life -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the promotion tasks; promote pinned models; serve until cancelled."""
        events = await self._db(self.catalog.model_events)
        self._last_demoted = {m: d for m, (d, _) in events.items() if d}
        self._cold_reasons = {m: r for m, (_, r) in events.items() if r}
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.inventory()
                self.placement.on_open = self.note_open
                self.placement.on_cold_changed = self.cold_changed
                task_status.started()
                for model, tier in (await self._db(self.catalog.pins)).items():
                    try:
                        await self.promote(model, tier, reason="pinned")
                    except TierfsError as exc:
                        log.warning("pinned model %s cannot be promoted: %s", model, exc)
                await trio.sleep_forever()
            finally:
                # Shutting down: copies stop at their next chunk instead of running to the
                # end in their threads, and each one's bookkeeping is finished (shielded).
                for job in self._active.values():
                    job.cancel.set()

    async def _db(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._catalog_limiter)

    async def inventory(self, *, refresh: bool = False) -> Inventory:
        """The models in the namespace, rescanned when the namespace changed.

        Args:
            refresh: look for changes in the cold stores first (for a user's request:
                a model added after the mount must be found without a listing of its
                directory through the mount).
        """
        if refresh:
            await trio.to_thread.run_sync(self.namespace.refresh)
        generation = self.namespace.generation
        if self._inventory is None or generation != self._inventory_generation:
            inventory = await trio.to_thread.run_sync(take_inventory, self.namespace)
            self._inventory = inventory
            # The walk itself may scan directories for the first time; changes after it
            # bump the generation again.
            self._inventory_generation = max(generation, self.namespace.generation)
            self._file_models = dict(models_by_file(inventory.models))
        assert self._inventory is not None
        return self._inventory

    def tier(self, name: str) -> Tier:
        """A configured tier by name.

        Raises:
            TierError: naming the configured tiers.
        """
        tier = self._tier_by_name.get(name)
        if tier is None:
            known = ", ".join(self._tier_by_name) or "none configured"
            raise TierError(f"unknown tier {name!r} (tiers: {known})", errno=errno.ENOENT)
        return tier

    async def model(self, name: str) -> Model:
        """Resolve a user-given model name.

        Raises:
            ModelNotFoundError, AmbiguousModelError: listing near names.
        """
        return find_model((await self.inventory(refresh=True)).models, name)

    # Jobs -------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.id)

    def job(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    # Promotion --------------------------------------------------------------------------

    async def promote(self, name: str, tier_name: str | None = None, *, reason: str) -> Job:
        """Start promoting a model (or return the promotion already running).

        Args:
            name: the model, as a user names it.
            tier_name: the tier to use; by default the fastest one it fits in.
            reason: why (command, pinned, opened), for logs and status.

        Raises:
            ModelNotFoundError: no such model.
            TierError: no such tier, or no tiers configured.
        """
        model = await self.model(name)
        if not self.tiers:
            raise TierError("no tiers are configured; add a [[tier]] to the config")
        tier = self.tier(tier_name) if tier_name else None
        running = self._active.get(model.name)
        if running is not None:
            return running
        assert self._nursery is not None
        job = Job(
            id=next(self._job_ids),
            model=model.name,
            tier=tier.name if tier else self.tiers[0].name,
            total=model.size,
            reason=reason,
        )
        self._jobs[job.id] = job
        self._active[model.name] = job
        self._nursery.start_soon(self._promotion, job, model, tier)
        return job

    async def _promotion(self, job: Job, model: Model, tier: Tier | None) -> None:
        try:
            job.state = JobState.RUNNING
            files = await self._resolve_files(model)
            hot = await self._db(self.catalog.replicas)
            hot_keys = {(r.file_id, r.tier) for r in hot if r.state is ReplicaState.HOT}
            hot_anywhere = {r.file_id for r in hot if r.state is ReplicaState.HOT}
            candidates = [tier] if tier else self.tiers
            chosen: Tier | None = None
            todo: list[ModelFile] = []
            async with self._space_lock:
                for candidate in candidates:
                    todo = [
                        f
                        for f in files
                        if (f.record.id, candidate.name) not in hot_keys
                        and (tier is not None or f.record.id not in hot_anywhere)
                    ]
                    needed = sum(f.record.size for f in todo)
                    if await self._make_room(candidate, needed, protect=model.name):
                        chosen = candidate
                        break
                if chosen is None:
                    reason = self._no_room_reason(model, candidates)
                    self._cold_reasons[model.name] = reason
                    await self._db(self.catalog.set_cold_reason, model.name, reason)
                    log.warning("%s stays cold: %s", model.name, reason)
                    raise TierError(reason, path=model.name, errno=errno.ENOSPC)
                job.tier = chosen.name
                claimed = []
                for f in todo:
                    path = str(chosen.hot_path(*f.key))
                    if await self._db(
                        self.catalog.begin_copy, f.record.id, chosen.name, path, f.record.size
                    ):
                        claimed.append(f)
            job.total = sum(f.record.size for f in claimed)
            if self._cold_reasons.pop(model.name, None) is not None:
                await self._db(self.catalog.set_cold_reason, model.name, None)
            log.info(
                "promoting %s to %s (%s, %d files; %s)",
                model.name,
                chosen.name,
                format_size(job.total),
                len(claimed),
                job.reason,
            )
            async with trio.open_nursery() as copies:
                for f in claimed:
                    copies.start_soon(self._copy_one, job, f, chosen)
            if job.cancel.is_set():
                job.state = JobState.CANCELLED
            elif job.error is not None:
                job.state = JobState.FAILED
            else:
                job.state = JobState.DONE
                log.info("%s is hot on %s", model.name, chosen.name)
        except CopyCancelled:
            job.state = JobState.CANCELLED
        except TierfsError as exc:
            job.state = JobState.FAILED
            job.error = str(exc)
            if not isinstance(exc, TierError):
                log.error("promotion of %s failed: %s", model.name, exc)
        except Exception as exc:  # a job must never take the mount down
            job.state = JobState.FAILED
            job.error = f"internal error: {exc!r}"
            log.exception("promotion of %s failed unexpectedly", model.name)
        finally:
            job.finished = time.time()
            self._active.pop(model.name, None)
            job.ended.set()
            self._forget_old_jobs()

    def _forget_old_jobs(self) -> None:
        finished = [j.id for j in self._jobs.values() if not j.active]
        for job_id in sorted(finished)[:-JOB_HISTORY]:
            del self._jobs[job_id]

    async def _copy_one(self, job: Job, f: ModelFile, tier: Tier) -> None:
        final = tier.hot_path(*f.key)
        temp = tier.temp_path(f.record.id)
        try:
            async with self._copy_limiter:
                if job.cancel.is_set():
                    raise CopyCancelled("cancelled before it started", path=str(final))
                result = await trio.to_thread.run_sync(
                    lambda: copy_file(
                        f.node.source,
                        temp,
                        final,
                        expected_size=f.record.size,
                        progress=job.add,
                        cancelled=job.cancel,
                        pause_hook=pause_point,
                        durable=tier.durable,
                    )
                )
        except (CopyError, OSError, trio.Cancelled) as exc:
            # No copy in place: drop the claim, even when the mount is stopping (a copy
            # still waiting for its turn is cancelled there) so that nothing is left to repair.
            with trio.CancelScope(shield=True):
                await self._db(self.catalog.drop_replica, f.record.id, tier.name)
            if isinstance(exc, trio.Cancelled):
                raise
            if isinstance(exc, CopyCancelled):
                return
            if isinstance(exc, OSError):
                exc = CopyError(f"copy of {f.node.source} failed: {exc}", path=str(final))
            # Not raised: trio would wrap it in an ExceptionGroup that no handler
            # above matches (killing the daemon), and would cancel the sibling copies
            # between their rename and their catalog update, leaking their claims.
            job.error = job.error or str(exc)
            log.error("promotion of %s failed: %s", job.model, exc)
            return
        # The copy is in place: settle it in the catalog even if the mount is stopping, so
        # that a clean stop leaves no claim half-done for the next start to repair.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pause_point, "copy_renamed")
            accepted = await self._db(
                self.catalog.finish_copy,
                f.record.id,
                tier.name,
                result.xxh3,
                f.record.identity,
            )
            if not accepted:
                # Demoted or changed underneath while we copied: the copy must not serve.
                await trio.to_thread.run_sync(unlink_quietly, final)
                return
        record = await self._db(self.catalog.file, f.record.id)
        if record is not None:
            self.placement.set_record(record)
        self.placement.set_hot(f.key, Backing(tier.name, final))

    async def _resolve_files(self, model: Model) -> list[ModelFile]:
        def resolve() -> list[ModelFile]:
            out = []
            for relpath in model.files:
                node = self.namespace.resolve(relpath)
                if node.kind is not Kind.FILE:
                    continue
                record = self.catalog.sync_file(node.store, node.relpath, node.attrs.identity)
                out.append(ModelFile(node, record))
            return out

        files = await trio.to_thread.run_sync(resolve, limiter=self._catalog_limiter)
        for f in files:
            self.placement.set_record(f.record)
        return files

    def _no_room_reason(self, model: Model, tiers: Iterable[Tier]) -> str:
        sizes = ", ".join(f"{t.name} holds {format_size(t.capacity)}" for t in tiers)
        return (
            f"{format_size(model.size)} does not fit, even after evicting every "
            f"unpinned model ({sizes})"
        )

    # Space ------------------------------------------------------------------------------

    async def _make_room(self, tier: Tier, needed: int, *, protect: str) -> bool:
        """Evict LRU unpinned models from `tier` until `needed` bytes fit.

        Called with the space lock held. Eviction starts above the high watermark and
        goes down to the low one.
        """
        used = (await self._db(self.catalog.tier_usage)).get(tier.name, 0)
        # The catalog says what we claimed; statvfs says what the file system still has.
        # A tier in a shared tmpfs (/dev/shm) may hold less than its configured size.
        free = await trio.to_thread.run_sync(tier.free_bytes)
        capacity = min(tier.capacity, used + free)
        if capacity < tier.capacity:
            log.info("tier %s: only %s free on its file system", tier.name, format_size(free))
        if used + needed <= capacity * self.policy.high_watermark:
            return True
        target = capacity * self.policy.low_watermark
        if needed > capacity:
            return False
        pins = await self._db(self.catalog.pins)
        victims = await self._eviction_order(tier, exclude={protect, *pins})
        if used - await self._reclaimable(tier, victims, pins) + needed > capacity:
            return False  # hopeless even with every victim gone: evict nothing for it
        for victim in victims:
            if used + needed <= target:
                break
            freed = await self._demote_files(victim, tier=tier, reason="evicted")
            if freed:
                log.info(
                    "evicted %s from %s (%s) to make room for %s",
                    victim.name,
                    tier.name,
                    format_size(freed),
                    protect,
                )
                used -= freed
                capacity = min(tier.capacity, used + await trio.to_thread.run_sync(tier.free_bytes))
        return used + needed <= capacity

    async def _reclaimable(self, tier: Tier, victims: list[Model], pins: dict[str, Any]) -> int:
        """Bytes that demoting every victim from `tier` would free (see `_demote_files`)."""
        keep: set[str] = set()
        for model in (await self.inventory()).models:
            if model.name in pins:
                keep.update(model.files)
        counted: set[int] = set()
        total = 0
        for victim in victims:
            for relpath in victim.files:
                if relpath in keep:
                    continue
                record = await self._db(self.catalog.file_by_path, *self._key_of(relpath))
                if record is None or record.id in counted:
                    continue
                counted.add(record.id)
                for replica in await self._db(self.catalog.replicas, record.id):
                    if replica.tier == tier.name and replica.state is not ReplicaState.COPYING:
                        total += replica.size
        return total

    async def _eviction_order(self, tier: Tier, exclude: set[str]) -> list[Model]:
        """Models with bytes on `tier`, least recently used first."""
        inventory = await self.inventory()
        replicas = await self._db(self.catalog.replicas)
        on_tier = {r.file_id for r in replicas if r.tier == tier.name}
        records = {r.id: r for r in await self._db(self.catalog.files)}
        by_key = {(r.store, r.relpath): r for r in records.values()}
        scored = []
        for model in inventory.models:
            if model.name in exclude or model.name in self._active:
                continue
            keys = [self._key_of(relpath) for relpath in model.files]
            ids = [by_key[k].id for k in keys if k in by_key]
            if not any(i in on_tier for i in ids):
                continue
            last = max((self.placement.last_access(k) for k in keys), default=0.0)
            scored.append((last, model.name, model))
        return [model for _, _, model in sorted(scored)]

    def _key_of(self, relpath: str) -> tuple[str, str]:
        try:
            node = self.namespace.resolve(relpath)
        except TierfsError:
            return ("", relpath)
        return (node.store, node.relpath)

    # Demotion ---------------------------------------------------------------------------

    async def demote(self, name: str) -> int:
        """Remove a model's hot copies; returns the bytes freed.

        A promotion of the model still running is cancelled first. Files shared with a
        pinned model (Ollama blobs) stay hot.

        Raises:
            ModelNotFoundError: no such model.
        """
        model = await self.model(name)
        running = self._active.get(model.name)
        if running is not None:
            running.cancel.set()
            await running.ended.wait()
        freed = await self._demote_files(model, tier=None, reason="demoted")
        log.info("demoted %s (%s freed)", model.name, format_size(freed))
        return freed

    async def _demote_files(self, model: Model, *, tier: Tier | None, reason: str) -> int:
        pins = await self._db(self.catalog.pins)
        keep: set[str] = set()
        for other in (await self.inventory()).models:
            if other.name != model.name and other.name in pins:
                keep.update(other.files)
        freed = 0
        for relpath in model.files:
            if relpath in keep:
                continue
            key = self._key_of(relpath)
            record = await self._db(self.catalog.file_by_path, *key)
            if record is None:
                continue
            for replica in await self._db(self.catalog.replicas, record.id):
                if tier is not None and replica.tier != tier.name:
                    continue
                if replica.state is ReplicaState.COPYING:
                    continue  # its job owns it, and was cancelled by the caller if need be
                freed += await self._evict(key, replica)
        self._last_demoted[model.name] = time.time()
        await self._db(self.catalog.note_demoted, model.name)
        log.debug("%s: %s", reason, model.name)
        return freed

    async def _evict(self, key: tuple[str, str], replica: Replica) -> int:
        # New opens stop using the copy before it goes; open handles keep their fd, and
        # tmpfs keeps an unlinked file's pages until the last one closes.
        if self.placement.hot_backing(key) == Backing(replica.tier, Path(replica.path)):
            self.placement.set_hot(key, None)
        # Marked, removed, dropped: once begun, finished even if the mount is stopping, so
        # that a clean stop leaves no demotion half-done for the next start to repair.
        with trio.CancelScope(shield=True):
            await self._db(self.catalog.begin_evict, replica.file_id, replica.tier)
            await trio.to_thread.run_sync(pause_point, "evict_marked")
            await trio.to_thread.run_sync(unlink_quietly, Path(replica.path))
            await self._db(self.catalog.drop_replica, replica.file_id, replica.tier)
        return replica.size

    async def cold_changed(self, store: str, relpath: str) -> None:
        """A cold file changed underneath: its hot copies are dropped."""
        record = await self._db(self.catalog.file_by_path, store, relpath)
        if record is None:
            return
        for replica in await self._db(self.catalog.replicas, record.id):
            if replica.state is ReplicaState.EVICTING:
                await self._evict((store, relpath), replica)

    # Pins -------------------------------------------------------------------------------

    async def pin(self, name: str, tier_name: str | None) -> Job:
        """Pin a model: promote it now and never evict it; survives restarts.

        Raises:
            ModelNotFoundError, TierError.
        """
        model = await self.model(name)
        if tier_name:
            self.tier(tier_name)
        await self._db(self.catalog.pin, model.name, tier_name)
        return await self.promote(model.name, tier_name, reason="pinned")

    async def unpin(self, name: str) -> bool:
        """Unpin a model; it stays hot until evicted or demoted.

        Raises:
            ModelNotFoundError.
        """
        model = await self.model(name)
        return bool(await self._db(self.catalog.unpin, model.name))

    # Policy -----------------------------------------------------------------------------

    def note_open(self, node: Node) -> None:
        """Called on every open: promote the file's model in the background if due."""
        if not self.policy.promote_on_open or not self.tiers or self._nursery is None:
            return
        if node.attrs.size < self.policy.min_size:
            return
        for name in self._file_models.get(node.relpath, ()):
            if name in self._active:
                return
            demoted = self._last_demoted.get(name)
            if demoted is not None and time.time() - demoted < self.policy.cooldown_s:
                continue
            self._nursery.start_soon(self._promote_if_cold, name)
            return

    async def _promote_if_cold(self, name: str) -> None:
        if name in self._active:
            return
        # This runs in the mover's nursery: anything raised here would take the daemon
        # down, and the model may vanish between the open and this task (a rescan).
        try:
            # The name came from the inventory a moment ago: no need to look for changes.
            model = find_model((await self.inventory()).models, name)
            if all(self.placement.hot_backing(self._key_of(f)) is not None for f in model.files):
                return
            await self.promote(name, None, reason="opened")
        except TierfsError as exc:
            log.info("not promoting %s on open: %s", name, exc)

    # Status -----------------------------------------------------------------------------

    def cold_reasons(self) -> dict[str, str]:
        """Why models stay cold, for those that do."""
        return dict(self._cold_reasons)
