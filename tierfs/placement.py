"""Placement: which copy of a file serves new opens, and what is known about it.

The FUSE layer asks this module, never the catalog directly. Without RAM tiers every
file is served from its cold store; the tiering layer registers hot copies here as they
become complete and withdraws them before they are deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from tierfs.catalog import AccessDelta, Catalog, FileRecord
from tierfs.namespace import Node
from tierfs.readpath import Backing, OpenFile

log = logging.getLogger(__name__)


@dataclass
class _Access:
    opens: int = 0
    bytes_read: int = 0
    last_access: float = 0.0


class Placement:
    """Resolve backing copies and gather access statistics.

    Args:
        catalog: where hashes are read from and access statistics go.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._records: dict[tuple[str, str], FileRecord] = {}
        self._hot: dict[tuple[str, str], Backing] = {}
        self._access: dict[tuple[str, str], _Access] = {}
        self._catalog_limiter = trio.CapacityLimiter(1)

    async def load(self) -> None:
        """Read what the catalog knows about files."""
        records = await trio.to_thread.run_sync(self.catalog.files)
        self._records = {(r.store, r.relpath): r for r in records}

    def record_of(self, node: Node) -> FileRecord | None:
        """The catalog's record of a node's cold file, if it is current."""
        record = self._records.get((node.store, node.relpath))
        if record is None or (record.size, record.mtime_ns) != (
            node.attrs.size,
            node.attrs.mtime_ns,
        ):
            return None
        return record

    def set_record(self, record: FileRecord) -> None:
        self._records[(record.store, record.relpath)] = record

    def cold_backing(self, node: Node) -> Backing:
        return Backing(tier=node.store, path=node.source)

    def backing_for_xattr(self, node: Node) -> Backing:
        return self._hot.get((node.store, node.relpath)) or self.cold_backing(node)

    async def backing_for_open(self, node: Node) -> Backing:
        """The copy that serves an open of `node`; the open is counted."""
        key = (node.store, node.relpath)
        if self.record_of(node) is None:
            # First open of this file (or of its new identity): give it a catalog row,
            # so its accesses and, later, its hash have somewhere to go.
            record = await trio.to_thread.run_sync(
                self.catalog.sync_file,
                node.store,
                node.relpath,
                node.attrs.size,
                node.attrs.mtime_ns,
                limiter=self._catalog_limiter,
            )
            self.set_record(record)
        access = self._access.setdefault(key, _Access())
        access.opens += 1
        access.last_access = time.time()
        return self._hot.get(key) or self.cold_backing(node)

    def closed(self, handle: OpenFile) -> None:
        for key, backing in self._hot.items():
            if backing.path == handle.backing.path:
                self._access.setdefault(key, _Access()).bytes_read += handle.bytes_read
                return

    def set_hot(self, node: Node, backing: Backing | None) -> None:
        """Serve new opens of `node` from `backing`, or from cold when None."""
        key = (node.store, node.relpath)
        if backing is None:
            self._hot.pop(key, None)
        else:
            self._hot[key] = backing

    def xxh3_of(self, node: Node) -> str | None:
        record = self.record_of(node)
        return record.xxh3 if record else None

    async def cold_changed(self, node: Node) -> None:
        """A cold file changed underneath: stop serving any copy of its old bytes."""
        self.set_hot(node, None)
        record = await trio.to_thread.run_sync(
            self.catalog.sync_file,
            node.store,
            node.relpath,
            node.attrs.size,
            node.attrs.mtime_ns,
            limiter=self._catalog_limiter,
        )
        self.set_record(record)

    async def flush_access(self) -> None:
        """Write gathered access statistics to the catalog."""
        if not self._access:
            return
        pending, self._access = self._access, {}
        deltas = []
        for (store, relpath), access in pending.items():
            record = self._records.get((store, relpath))
            if record is not None:
                deltas.append(
                    AccessDelta(record.id, access.opens, access.bytes_read, access.last_access)
                )
        if deltas:
            await trio.to_thread.run_sync(
                self.catalog.record_access, deltas, limiter=self._catalog_limiter
            )
