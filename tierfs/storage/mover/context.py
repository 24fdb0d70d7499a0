"""What the parts of the mover share: the mount's catalog, namespace, registry and tiers.

Catalog calls go through `MoverContext.db`, one at a time on a worker thread, so that no
SQLite call runs on the trio thread.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

import trio

from tierfs.config import Config
from tierfs.errors import TierError, TierfsError
from tierfs.namespace.inventory import Inventory, take_inventory
from tierfs.namespace.merge import Namespace, Node
from tierfs.namespace.models import Model, find_model, models_by_file
from tierfs.storage.backing import FileKey
from tierfs.storage.catalog import Catalog
from tierfs.storage.placement import Placement
from tierfs.storage.records import FileRecord
from tierfs.storage.tiers import Tier

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class ModelFile:
    """A file of a model, resolved in the namespace and known to the catalog."""

    node: Node
    record: FileRecord

    @property
    def key(self) -> FileKey:
        return (self.node.store, self.node.relpath)


class MoverContext:
    """The mount's parts as the mover sees them, and the lookups its parts share.

    Args:
        config: the mount's config (tiers, policy and placement strategy).
        catalog: the source of truth.
        namespace: the merged cold namespace.
        placement: the replica registry.
        tiers: the prepared tiers (kept fastest first).
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
        self.catalog = catalog
        self.namespace = namespace
        self.placement = placement
        self.tiers = sorted(tiers, key=lambda t: t.rank)
        self._tier_by_name = {t.name: t for t in self.tiers}
        self._catalog_limiter = trio.CapacityLimiter(1)
        self._inventory: Inventory | None = None
        self._inventory_generation = -1
        self.file_models: dict[str, tuple[str, ...]] = {}

    async def db(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a catalog call on a worker thread, one at a time."""
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
        inventory = self._inventory
        if inventory is None or generation != self._inventory_generation:
            inventory = await trio.to_thread.run_sync(take_inventory, self.namespace)
            self._inventory = inventory
            # The walk itself may scan directories for the first time; changes after it
            # bump the generation again.
            self._inventory_generation = max(generation, self.namespace.generation)
            self.file_models = dict(models_by_file(inventory.models))
        return inventory

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

    def key_of(self, relpath: str) -> FileKey:
        """The catalog key of a namespace path (its store, once resolved)."""
        try:
            node = self.namespace.resolve(relpath)
        except TierfsError:
            return ("", relpath)
        return (node.store, node.relpath)
