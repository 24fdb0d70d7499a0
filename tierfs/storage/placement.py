"""The replica registry: which copy of a file serves new opens, and what is known about it.

The FUSE layer asks this module, never the catalog directly, and only this module changes
which copy serves. A file is served from its cold store until a complete, verified hot
copy is registered here (`serve`); a copy is withdrawn here (`withdraw`) before anything
deletes it. Open handles are not affected either way: they keep the fd of the copy they
were opened on. What the registry sees (opens, changed cold files, copies withdrawn for
bad bytes) it publishes on `events` (see `tierfs.storage.events`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from tierfs.namespace.merge import Node
from tierfs.storage.backing import Backing, FileKey
from tierfs.storage.catalog import Catalog
from tierfs.storage.events import ColdChanged, CopyWithdrawn, FileOpened, StorageEvents
from tierfs.storage.records import AccessDelta, FileRecord, ReplicaState

log = logging.getLogger(__name__)


@dataclass
class _Access:
    opens: int = 0
    bytes_read: int = 0
    last_access: float = 0.0


class Placement:
    """The replica registry: the copy serving each file, the catalog's records of files,
    and their access statistics; it publishes what it sees on `events`.

    Args:
        catalog: where hashes and hot replicas are read from and access statistics go.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._records: dict[FileKey, FileRecord] = {}
        self._hot: dict[FileKey, Backing] = {}
        self._pending: dict[FileKey, _Access] = {}
        self._last_access: dict[FileKey, float] = {}
        self._catalog_limiter = trio.CapacityLimiter(1)
        self.events = StorageEvents()

    async def load(self) -> None:
        """Read what the catalog knows: file records and verified hot copies."""

        def read() -> tuple[list[FileRecord], list[tuple[FileKey, Backing]]]:
            records = self.catalog.files()
            by_id = {r.id: r for r in records}
            hot = []
            for replica in self.catalog.replicas():
                record = by_id.get(replica.file_id)
                if record is not None and replica.state is ReplicaState.HOT:
                    key = (record.store, record.relpath)
                    hot.append((key, Backing(replica.tier, Path(replica.path))))
            return records, hot

        records, hot = await trio.to_thread.run_sync(read, limiter=self._catalog_limiter)
        self._records = {(r.store, r.relpath): r for r in records}
        self._last_access = {
            (r.store, r.relpath): r.last_access for r in records if r.last_access is not None
        }
        self._hot = dict(hot)

    def record_of(self, node: Node) -> FileRecord | None:
        """The catalog's record of a node's cold file, if it is current."""
        record = self._records.get((node.store, node.relpath))
        if record is None or record.identity != node.attrs.identity:
            return None
        return record

    def note_record(self, record: FileRecord) -> None:
        """Remember the catalog's current record of a file (its identity and hash)."""
        self._records[(record.store, record.relpath)] = record

    def hot_backing(self, key: FileKey) -> Backing | None:
        return self._hot.get(key)

    def serve(self, record: FileRecord, backing: Backing) -> None:
        """Serve new opens of a file from a verified hot copy the catalog calls ``hot``."""
        key = (record.store, record.relpath)
        self._records[key] = record
        self._hot[key] = backing

    def withdraw(self, key: FileKey, backing: Backing | None = None) -> None:
        """Serve new opens of a file from cold again, before its copy is deleted.

        Args:
            key: the file.
            backing: withdraw only this copy: a file already served by another copy (moved
                to another tier meanwhile) keeps that one.
        """
        if backing is None or self._hot.get(key) == backing:
            self._hot.pop(key, None)

    async def withdraw_stale(self, key: FileKey) -> None:
        """Withdraw a copy whose bytes were found wrong; pages cached from it must go too."""
        self.withdraw(key)
        await self.events.publish(CopyWithdrawn(key))

    def last_access(self, key: FileKey) -> float:
        return self._last_access.get(key, 0.0)

    def last_accesses(self) -> dict[FileKey, float]:
        """Every file's last open, including those not yet flushed to the catalog."""
        return dict(self._last_access)

    def serving(self, node: Node) -> Backing:
        """The copy that serves new opens of `node` now: its hot copy, or its cold file."""
        return self._hot.get((node.store, node.relpath)) or Backing(node.store, node.source)

    async def opening(self, node: Node) -> Backing:
        """Count an open of `node` and return the copy that serves it now.

        A hot copy can be withdrawn and deleted between this answer and the open of its
        path; the caller then asks `serving` again, which has fallen back to cold.
        """
        key = (node.store, node.relpath)
        if self.record_of(node) is None:
            # First open of this file (or of its new identity): give it a catalog row,
            # so its accesses and, later, its hash have somewhere to go.
            await self._sync_record(node)
        now = time.time()
        access = self._pending.setdefault(key, _Access())
        access.opens += 1
        access.last_access = now
        self._last_access[key] = now
        self.events.hint(FileOpened(node))
        return self.serving(node)

    def closed(self, key: FileKey, bytes_read: int) -> None:
        """Count the bytes a closed handle read through the daemon."""
        self._pending.setdefault(key, _Access()).bytes_read += bytes_read

    def xxh3_of(self, node: Node) -> str | None:
        record = self.record_of(node)
        return record.xxh3 if record else None

    async def cold_changed(self, node: Node) -> None:
        """A cold file changed underneath: stop serving any copy of its old bytes.

        Returns once the subscribers have acted on it (the mover deleted the copies), so
        the change is complete when the request that found it is answered.
        """
        key = (node.store, node.relpath)
        self.withdraw(key)
        await self._sync_record(node)
        await self.events.publish(ColdChanged(key))
        await self.events.settled(ColdChanged)

    async def _sync_record(self, node: Node) -> None:
        record = await trio.to_thread.run_sync(
            self.catalog.sync_file,
            node.store,
            node.relpath,
            node.attrs.identity,
            limiter=self._catalog_limiter,
        )
        self.note_record(record)

    async def flush_access(self) -> None:
        """Write gathered access statistics to the catalog."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        deltas = []
        for key, access in pending.items():
            record = self._records.get(key)
            if record is not None:
                deltas.append(
                    AccessDelta(record.id, access.opens, access.bytes_read, access.last_access)
                )
        if deltas:
            await trio.to_thread.run_sync(
                self.catalog.record_access, deltas, limiter=self._catalog_limiter
            )
