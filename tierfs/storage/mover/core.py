"""The mover: promotes models into RAM tiers and demotes them, by command or by policy.

The unit is a model (see `tierfs.namespace.models`). Promoting it copies each of its files
that is not hot yet (`promotion`); making room demotes the least recently used unpinned
models (`eviction`). Every change goes through the catalog first, so a crash leaves states
that `tierfs.ops.fsck` resolves: only replicas the catalog calls ``hot`` are ever served.

Readers are never blocked: new opens keep going to cold until a file's copy is complete,
and handles already open keep the copy they were opened on.
"""

from __future__ import annotations

import functools
import logging
from typing import get_args

import trio

from tierfs.config import Config, PlacementConfig, Strategy, format_size
from tierfs.errors import ConfigError, TierError, TierfsError
from tierfs.namespace.inventory import Inventory
from tierfs.namespace.models import Model
from tierfs.storage.events import ColdChanged, FileOpened, StorageEvent, consume
from tierfs.storage.mover.context import MoverContext
from tierfs.storage.mover.eviction import Evictor
from tierfs.storage.mover.jobs import Job, JobBook
from tierfs.storage.mover.pins import Pins
from tierfs.storage.mover.policy import PromoteOnOpen
from tierfs.storage.mover.promotion import Promoter
from tierfs.storage.tiers import Tier

log = logging.getLogger(__name__)


class Mover:
    """Owns promotions, demotions and eviction for one mount.

    Args:
        ctx: the mount's parts the mover works on (config, catalog, namespace, the
            replica registry, whose events the mover consumes, and the tiers, fastest
            first).
    """

    def __init__(self, ctx: MoverContext) -> None:
        self.ctx = ctx
        self.tiers = self.ctx.tiers
        self._jobs = JobBook()
        copy_limiter = trio.CapacityLimiter(ctx.config.policy.max_parallel_copies)
        self._pins = Pins(self.ctx)
        self._evictor = Evictor(self.ctx, self._jobs, self._pins, copy_limiter)
        self._promoter = Promoter(self.ctx, self._jobs, self._evictor, copy_limiter)
        self._on_open = PromoteOnOpen(self.ctx, self._jobs, self._evictor.last_demoted)
        self._nursery: trio.Nursery | None = None

    # Life -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the promotion tasks; promote pinned models; serve until cancelled."""
        ctx = self.ctx
        events = await ctx.db(ctx.catalog.model_events)
        self._evictor.last_demoted.update({m: d for m, (d, _) in events.items() if d})
        self._promoter.cold_reasons.update({m: r for m, (_, r) in events.items() if r})
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.inventory()
                channel = ctx.placement.events.subscribe(FileOpened, ColdChanged)
                await nursery.start(consume, channel, self._on_storage_event)
                task_status.started()
                for model, tier in (await self._pins.all()).items():
                    try:
                        await self.promote(model, tier, reason="pinned")
                    except TierfsError as exc:
                        log.warning("pinned model %s cannot be promoted: %s", model, exc)
                await trio.sleep_forever()
            finally:
                # Shutting down: copies stop at their next chunk instead of running to the
                # end in their threads, and each one's bookkeeping is finished (shielded).
                for job in self._jobs.active.values():
                    job.cancel.set()

    async def _on_storage_event(self, event: StorageEvent) -> None:
        if isinstance(event, FileOpened):
            assert self._nursery is not None
            promote = functools.partial(self.promote, reason="opened")
            self._on_open.opened(event.node, self._nursery, promote)
        elif isinstance(event, ColdChanged):
            await self._evictor.drop_changed(event.key)

    async def inventory(self, *, refresh: bool = False) -> Inventory:
        """The models in the namespace (see `MoverContext.inventory`)."""
        return await self.ctx.inventory(refresh=refresh)

    def tier(self, name: str) -> Tier:
        """A configured tier by name.

        Raises:
            TierError: naming the configured tiers.
        """
        return self.ctx.tier(name)

    async def model(self, name: str) -> Model:
        """Resolve a user-given model name.

        Raises:
            ModelNotFoundError, AmbiguousModelError: listing near names.
        """
        return await self.ctx.model(name)

    # Jobs -------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        return self._jobs.all()

    def job(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    # Placement strategy -----------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        """The placement strategy the next promotion uses."""
        return self.ctx.config.placement.strategy

    def set_strategy(self, name: str) -> None:
        """Use another placement strategy from the next promotion on.

        Raises:
            ConfigError: not a strategy tierfs knows.
        """
        if name not in get_args(Strategy):
            known = ", ".join(get_args(Strategy))
            raise ConfigError(f"unknown placement strategy {name!r} (one of: {known})")
        placement = PlacementConfig(strategy=name)  # type: ignore[arg-type]
        self.use_config(self.ctx.config.model_copy(update={"placement": placement}))

    def use_config(self, config: Config) -> None:
        """Decide by `config` from now on (watermarks, promote-on-open, strategy).

        The tiers stay as mounted: a changed ``[[tier]]`` needs a new mount.
        """
        self.ctx.config = config
        log.info("config changed live; placement strategy: %s", self.strategy)

    # Promotion and demotion -------------------------------------------------------------

    async def promote(self, name: str, tier_name: str | None = None, *, reason: str) -> Job:
        """Start promoting a model (or return the promotion already running).

        Args:
            name: the model, as a user names it.
            tier_name: the tier to use; by default the one the placement strategy picks.
            reason: why (command, pinned, opened), for logs and status.

        Raises:
            ModelNotFoundError: no such model.
            TierError: no such tier, or no tiers configured.
        """
        model = await self.model(name)
        if not self.tiers:
            raise TierError("no tiers are configured; add a [[tier]] to the config")
        tier = self.tier(tier_name) if tier_name else None
        running = self._jobs.active.get(model.name)
        if running is not None:
            return running
        assert self._nursery is not None
        tier_shown = tier.name if tier else self.tiers[0].name
        job = self._jobs.start(model.name, tier_shown, model.size, reason)
        self._nursery.start_soon(self._promoter.run_job, job, model, tier)
        return job

    async def demote(self, name: str) -> int:
        """Remove a model's hot copies; returns the bytes freed.

        A promotion of the model still running is cancelled first. Files shared with a
        pinned model (Ollama blobs) stay hot.

        Raises:
            ModelNotFoundError: no such model.
        """
        model = await self.model(name)
        running = self._jobs.active.get(model.name)
        if running is not None:
            running.cancel.set()
            await running.ended.wait()
        freed = await self._evictor.demote_files(model, tier=None, reason="demoted")
        log.info("demoted %s (%s freed)", model.name, format_size(freed))
        return freed

    # Pins -------------------------------------------------------------------------------

    async def pin(self, name: str, tier_name: str | None) -> Job:
        """Pin a model: promote it now and never evict it; survives restarts.

        Raises:
            ModelNotFoundError, TierError.
        """
        model = await self.model(name)
        if tier_name:
            self.tier(tier_name)
        await self._pins.add(model.name, tier_name)
        return await self.promote(model.name, tier_name, reason="pinned")

    async def unpin(self, name: str) -> bool:
        """Unpin a model; it stays hot until evicted or demoted.

        Raises:
            ModelNotFoundError.
        """
        model = await self.model(name)
        return await self._pins.remove(model.name)

    # Status -----------------------------------------------------------------------------

    def cold_reasons(self) -> dict[str, str]:
        """Why models stay cold, for those that do."""
        return dict(self._promoter.cold_reasons)
