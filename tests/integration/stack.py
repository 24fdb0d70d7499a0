"""The daemon's parts wired together in-process, without a FUSE mount.

Catalog, namespace, placement, read path, operations, mover and the control façade are
the real classes over a real SQLite file and real directories; only the kernel is
missing (nothing is pushed into a page cache). A tier is a plain directory (the RAM check
is the mount's business), so these tests run as any user, in milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import trio

from tierfs.config import Config, config_from_dict
from tierfs.daemon.service import Daemon, DaemonControl
from tierfs.fuse.operations import TierfsOperations
from tierfs.fuse.readpath import PushFn, ReadPath
from tierfs.namespace.merge import ColdStore, Namespace
from tierfs.storage.catalog import Catalog
from tierfs.storage.mover import Mover
from tierfs.storage.placement import Placement
from tierfs.storage.tiers import HOT_DIR, TMP_DIR, Tier


@dataclass
class Stack:
    """The parts of one mount, as `tierfs.daemon.service.Daemon` wires them (and names them, so
    that `DaemonControl` can drive a stack as it drives a daemon)."""

    config: Config
    catalog: Catalog
    namespace: Namespace
    placement: Placement
    readpath: ReadPath
    operations: TierfsOperations
    mover: Mover
    tiers: list[Tier]

    @property
    def stores(self) -> dict[str, Path]:
        return {c.name: c.path for c in self.config.cold}

    @property
    def control(self) -> DaemonControl:
        return DaemonControl(cast(Daemon, self))


def stack_config(
    base: Path, *, tier_size: int = 64 << 20, read: dict[str, Any] | None = None, **policy: Any
) -> Config:
    """A config with one cold store (``base/cold``) and one tier (``base/ram0``)."""
    cold = base / "cold"
    cold.mkdir(exist_ok=True)
    tier = base / "ram0"
    for sub in (HOT_DIR, TMP_DIR):
        (tier / sub).mkdir(parents=True, exist_ok=True)
    return config_from_dict(
        {
            "mountpoint": str(base / "mnt"),
            "state_dir": str(base / "state"),
            "cold": [{"name": "c", "path": str(cold)}],
            "tier": [{"name": "ram0", "path": str(tier), "size": tier_size}],
            "policy": policy,
            "read": read or {},
        }
    )


@asynccontextmanager
async def running_stack(
    config: Config,
    push: PushFn | None = None,
    tiers_of: Callable[[Catalog], list[Tier]] | None = None,
) -> AsyncIterator[Stack]:
    """Build the parts for `config`, start the mover, and stop it on exit.

    Args:
        config: as from `stack_config`.
        push: stands in for ``pyfuse3.notify_store`` (prefetch is off without one).
        tiers_of: makes the tiers from the catalog (as a daemon's start does); by default
            each configured tier is a plain directory taken as tmpfs.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(config.catalog_path)
    try:
        if tiers_of is not None:
            tiers = tiers_of(catalog)
        else:
            tiers = [Tier(t, capacity=t.size, fstype="tmpfs") for t in config.tier]
        namespace = Namespace([ColdStore(c.name, c.path) for c in config.cold])
        placement = Placement(catalog)
        await placement.load()
        readpath = ReadPath(config.read, push=push)
        operations = TierfsOperations(namespace, placement, readpath)
        mover = Mover(config, catalog, namespace, placement, tiers)
        async with trio.open_nursery() as nursery:
            await nursery.start(readpath.run)
            await nursery.start(mover.run)
            yield Stack(config, catalog, namespace, placement, readpath, operations, mover, tiers)
            nursery.cancel_scope.cancel()
    finally:
        catalog.close()
