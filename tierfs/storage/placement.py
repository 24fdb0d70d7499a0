"""Placement: which copy of a file serves new opens, and what is known about it.

The FUSE layer asks this module, never the catalog directly. A file is served from its
cold store until the mover registers a complete, verified hot copy here; the mover
withdraws the copy here before it deletes it. Open handles are not affected either way:
they keep the fd of the copy they were opened on.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from tierfs.errors import BackingIOError
from tierfs.fuse.readpath import Backing, OpenFile, ReadPath
from tierfs.namespace.merge import Node
from tierfs.storage.catalog import AccessDelta, Catalog, FileRecord, ReplicaState

log = logging.getLogger(__name__)

FileKey = tuple[str, str]  # (cold store, relpath)


@dataclass
class _Access:
    opens: int = 0
    bytes_read: int = 0
    last_access: float = 0.0


class Placement:
    """Resolve backing copies and gather access statistics.

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
        # Set by the mover: sees every open (transparent promotion), and every cold
        # file that changed underneath (its hot copies must go).
        self.on_open: Callable[[Node], None] | None = None
        self.on_cold_changed: Callable[[str, str], Awaitable[None]] | None = None

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

    def set_record(self, record: FileRecord) -> None:
        self._records[(record.store, record.relpath)] = record

    def hot_backing(self, key: FileKey) -> Backing | None:
        return self._hot.get(key)

    def set_hot(self, key: FileKey, backing: Backing | None) -> None:
        """Serve new opens of a file from `backing`, or from cold when None."""
        if backing is None:
            self._hot.pop(key, None)
        else:
            self._hot[key] = backing

    def backing_for_xattr(self, node: Node) -> Backing:
        return self._hot.get((node.store, node.relpath)) or Backing(node.store, node.source)

    def last_access(self, key: FileKey) -> float:
        return self._last_access.get(key, 0.0)

    def last_accesses(self) -> dict[FileKey, float]:
        """Every file's last open, including those not yet flushed to the catalog."""
        return dict(self._last_access)

    async def open(self, node: Node, readpath: ReadPath) -> OpenFile:
        """Open the copy that serves `node` now; the open is counted.

        A hot copy can be withdrawn and deleted by an eviction between choosing it and
        opening it (the open runs on a worker thread). The reader must not see that: the
        copy is chosen again, which then falls back to cold.

        Raises:
            BackingIOError: the copy that serves the file cannot be opened.
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
        if self.on_open is not None:
            self.on_open(node)
        cold = Backing(node.store, node.source)
        while True:
            backing = self._hot.get(key) or cold
            try:
                return await readpath.open(node.inode, backing, node.attrs.size)
            except BackingIOError as exc:
                # Worth another try only for a hot copy that vanished and that placement
                # has since stopped serving (eviction withdraws before it deletes).
                if exc.errno != errno.ENOENT or backing == cold or self._hot.get(key) == backing:
                    raise
                log.debug("%s was evicted while being opened; opening again", backing.path)

    def closed(self, handle: OpenFile, key: FileKey) -> None:
        self._pending.setdefault(key, _Access()).bytes_read += handle.bytes_read

    def xxh3_of(self, node: Node) -> str | None:
        record = self.record_of(node)
        return record.xxh3 if record else None

    async def cold_changed(self, node: Node) -> None:
        """A cold file changed underneath: stop serving any copy of its old bytes."""
        key = (node.store, node.relpath)
        self.set_hot(key, None)
        await self._sync_record(node)
        if self.on_cold_changed is not None:
            await self.on_cold_changed(*key)

    async def _sync_record(self, node: Node) -> None:
        record = await trio.to_thread.run_sync(
            self.catalog.sync_file,
            node.store,
            node.relpath,
            node.attrs.identity,
            limiter=self._catalog_limiter,
        )
        self.set_record(record)

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
