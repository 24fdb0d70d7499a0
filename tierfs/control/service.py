"""The control plane's view of a running daemon: what each API request does to it.

`DaemonControl` implements `tierfs.control.api.ControlService` over the parts the daemon
wires (`DaemonParts`); it never imports the daemon itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import trio

from tierfs.config import Config
from tierfs.control.metrics import MetricsTable, metrics_table
from tierfs.control.status import build_report
from tierfs.control.web.settings import current_settings, save_changes, with_changes
from tierfs.faults import pause_point
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.readpath import ReadPath
from tierfs.namespace.merge import Namespace
from tierfs.ops.fsck import FsckReport, check
from tierfs.storage.catalog import Catalog
from tierfs.storage.mover import Mover
from tierfs.storage.placement import Placement
from tierfs.storage.pools import PoolManager
from tierfs.storage.tiers import Tier

log = logging.getLogger(__name__)


class DaemonParts(Protocol):
    """The parts of a mount the control plane drives, as the daemon names them."""

    config: Config
    config_path: Path | None
    catalog: Catalog
    namespace: Namespace
    placement: Placement
    readpath: ReadPath
    operations: TierfsOperations
    mover: Mover
    pools: PoolManager
    tiers: list[Tier]

    @property
    def stores(self) -> dict[str, Path]: ...


class DaemonControl:
    """The control API's view of a running daemon (implements `ControlService`).

    Args:
        daemon: the daemon's parts (``tierfs.daemon.service.Daemon``, or the in-process
            stack of the tests).
    """

    def __init__(self, daemon: DaemonParts) -> None:
        self.daemon = daemon
        self._fsck_lock = trio.Lock()
        self._settings_lock = trio.Lock()
        # A scrape or a status reads the catalog on a worker thread; one at a time, so
        # that a burst of requests queues rather than fanning out across threads.
        self._catalog_limiter = trio.CapacityLimiter(1)

    async def status(self) -> dict[str, Any]:
        """The status report, with the daemon's own access times and read counters."""
        d = self.daemon
        inventory = await d.mover.inventory(refresh=True)
        jobs = [j.to_json() for j in d.mover.jobs()]
        reasons = d.mover.cold_reasons()
        # Opens reach the catalog only at the next flush; the status shows them at once.
        accessed = d.placement.last_accesses()
        # Pools resized or disconnected at runtime report their sizes as they are now.
        config = d.config.model_copy(update={"tier": [t.config for t in d.tiers]})
        report = await trio.to_thread.run_sync(
            lambda: build_report(
                config,
                inventory,
                d.catalog,
                d.namespace,
                jobs=jobs,
                cold_reasons=reasons,
                last_access=accessed,
                running=True,
            ),
            limiter=self._catalog_limiter,
        )
        report["reads"] = d.operations.stats()
        # Changed while mounted, the strategy in use is the mover's.
        report["strategy"] = d.mover.strategy
        return dict(report)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the mover remembers."""
        return [j.to_json() for j in self.daemon.mover.jobs()]

    def job(self, job_id: int) -> dict[str, Any] | None:
        """One job, or None if the mover does not know it."""
        job = self.daemon.mover.job(job_id)
        return job.to_json() if job else None

    async def promote(self, model: str, tier: str | None) -> dict[str, Any]:
        """Start promoting `model`; returns its job."""
        job = await self.daemon.mover.promote(model, tier, reason="command")
        return job.to_json()

    async def demote(self, model: str) -> dict[str, Any]:
        """Remove the hot copies of `model`; returns the bytes freed."""
        found = await self.daemon.mover.model(model)
        freed = await self.daemon.mover.demote(model)
        return {"model": found.name, "freed": freed}

    async def pin(self, model: str, tier: str | None) -> dict[str, Any]:
        """Pin `model` and promote it; returns the promotion's job."""
        job = await self.daemon.mover.pin(model, tier)
        return job.to_json()

    async def unpin(self, model: str) -> dict[str, Any]:
        """Unpin `model`; says whether it was pinned."""
        found = await self.daemon.mover.model(model)
        return {"model": found.name, "unpinned": await self.daemon.mover.unpin(model)}

    def settings(self) -> dict[str, Any]:
        """The settings the web GUI may change, as they are now."""
        return current_settings(self.daemon.config)

    async def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate, save to the config file (comments kept), then apply live."""
        d = self.daemon
        async with self._settings_lock:
            path = d.config_path
            source = str(path or "<config>")
            # In a worker: validating resolves paths, the mountpoint among them, and a
            # lookup in our own mount needs this thread to answer it.
            config = await trio.to_thread.run_sync(with_changes, d.config, changes, source)
            if path is not None:
                await trio.to_thread.run_sync(save_changes, path, changes)
            d.config = config
            d.mover.use_config(config)
            log.info("settings changed live: %s", changes)
        return {**current_settings(config), "saved_to": str(path) if path else None}

    async def pools(self) -> list[dict[str, Any]]:
        """Every pool: kind, path, size, used, free and state."""
        return await self.daemon.pools.pools()

    async def pool_action(self, name: str, action: str, size: int | None) -> dict[str, Any]:
        """Start connecting, disconnecting or resizing a pool; its operation, as JSON."""
        pools = self.daemon.pools
        if action == "connect":
            op = await pools.connect(name)
        elif action == "disconnect":
            op = await pools.disconnect(name)
        else:
            assert size is not None
            op = await pools.resize(name, size)
        return op.to_json()

    def pool_operation(self, op_id: int) -> dict[str, Any] | None:
        """A pool operation's steps and state, or None for an unknown id."""
        op = self.daemon.pools.operation(op_id)
        return op.to_json() if op else None

    async def fsck(self, deep: bool) -> dict[str, Any]:
        """Check the catalog against the tiers while serving, repairing what it finds."""
        d = self.daemon
        token = trio.lowlevel.current_trio_token()

        def withdraw(store: str, relpath: str) -> None:
            trio.from_thread.run(d.placement.withdraw_stale, (store, relpath), trio_token=token)

        async with self._fsck_lock:
            await d.placement.flush_access()

            def run_check() -> FsckReport:
                pause_point("fsck_checking")
                # Copies may start, finish or be evicted while this runs: `live` leaves
                # those in flight alone, whenever they began.
                return check(
                    d.catalog,
                    d.tiers,
                    d.stores,
                    deep=deep,
                    repair=True,
                    live=True,
                    withdraw=withdraw,
                )

            report = await trio.to_thread.run_sync(run_check)
            # Copies replaced or removed by the check are re-read from the catalog.
            await d.placement.load()
            # Readers after the repair must not get pages cached from a withdrawn copy.
            await d.placement.events.settled()
        return report.to_json()

    async def metrics(self) -> MetricsTable:
        """The Prometheus table of this scrape."""
        d = self.daemon
        usage = await trio.to_thread.run_sync(d.catalog.tier_usage, limiter=self._catalog_limiter)
        return metrics_table(
            d.readpath.stats,
            d.operations.read_mode.mode,
            d.tiers,
            usage,
            copies_active=sum(1 for j in d.mover.jobs() if j.active),
        )
