"""The catalog's table of pool lifecycles, kept apart from files and replicas.

A pool (a tier whose lifecycle is steered at runtime) records its state and the last step
its operation completed, in one transaction per step, so that after a crash the next
connect, disconnect or mount knows where the operation stopped (see
`tierfs.storage.pools`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import astuple, dataclass


@dataclass(frozen=True)
class PoolRecord:
    """A pool's lifecycle as recorded.

    ``state`` is a `tierfs.states.PoolState`; ``step`` the last step completed of
    ``action`` (connect, disconnect, resize); ``size`` the pool's size then, and
    ``configured`` the config's size then: a size set by ``resize`` holds until the config
    changes.
    """

    name: str
    state: str
    action: str | None = None
    step: str | None = None
    size: int | None = None
    error: str | None = None
    configured: int | None = None


_POOL_COLUMNS = "name, state, action, step, size, error, configured"
POOLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    name    TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    action  TEXT,
    step    TEXT,
    size    INTEGER,
    error   TEXT,
    configured INTEGER,
    updated REAL NOT NULL
);
"""


class PoolTable:
    """The ``pools`` table; mixed into `tierfs.storage.catalog.Catalog`."""

    _lock: threading.RLock
    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def pool_records(self) -> dict[str, PoolRecord]:
        """The recorded lifecycle of every pool that ever changed at runtime."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_POOL_COLUMNS} FROM pools ORDER BY name").fetchall()
        return {row[0]: PoolRecord(*row) for row in rows}

    def set_pool(self, record: PoolRecord) -> None:
        """Record a pool's state and the last step done, in one transaction."""
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO pools ({_POOL_COLUMNS}, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*astuple(record), time.time()),
            )
