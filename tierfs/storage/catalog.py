"""The catalog: the source of truth about files, hot copies, pins and access.

SQLite in WAL mode. Every change of state is one transaction, and replicas move through
explicit states (``copying`` -> ``hot`` -> ``evicting`` -> gone), so that after a crash at
any instant the catalog says exactly what may be trusted: only ``hot`` replicas, whose
bytes were verified before they were renamed into place.

The methods are synchronous and thread-safe; the daemon calls them through
``trio.to_thread.run_sync`` so that no SQLite call runs on the trio thread.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tierfs.errors import CatalogError
from tierfs.namespace.identity import FileIdentity
from tierfs.storage.catalog_pools import POOLS_SCHEMA, PoolTable
from tierfs.storage.records import AccessDelta, FileRecord, Replica, ReplicaState

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id          INTEGER PRIMARY KEY,
    store       TEXT NOT NULL,
    relpath     TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    xxh3        TEXT,
    last_access REAL,
    opens       INTEGER NOT NULL DEFAULT 0,
    bytes_read  INTEGER NOT NULL DEFAULT 0,
    ctime_ns    INTEGER NOT NULL DEFAULT 0,
    ino         INTEGER NOT NULL DEFAULT 0,
    dev         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (store, relpath)
);
CREATE TABLE IF NOT EXISTS replicas (
    file_id  INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    tier     TEXT NOT NULL,
    path     TEXT NOT NULL,
    state    TEXT NOT NULL CHECK (state IN ('copying', 'hot', 'evicting')),
    size     INTEGER NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (file_id, tier)
);
CREATE TABLE IF NOT EXISTS pins (
    model   TEXT PRIMARY KEY,
    tier    TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_events (
    model        TEXT PRIMARY KEY,
    last_demoted REAL,
    cold_reason  TEXT
);
"""


class Catalog(PoolTable):
    """The SQLite catalog in the state directory.

    Args:
        path: the database file; its directory is created if missing.

    Raises:
        CatalogError: the file is not a tierfs catalog, or its schema is newer than ours.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(
                f"{path}: not a usable catalog ({exc})", path=str(path), errno=errno.EIO
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a transaction never fails
        # half-way with SQLITE_BUSY after it has read state it relies on.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _migrate(self) -> None:
        # executescript commits on its own; the statements are idempotent.
        with self._lock:
            self._db.executescript(_SCHEMA + POOLS_SCHEMA)
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                return
            found = int(row[0])
            if found == 1:
                # Version 2 widened a file's identity (see tierfs.namespace.identity). Old rows get
                # zeros, which match no file: their hot copies are dropped and made again.
                for column in ("ctime_ns", "ino", "dev"):
                    db.execute(f"ALTER TABLE files ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
                found = 2
            if found == 2:
                # Version 3 added the pools table, which the schema script just created.
                found = 3
            if int(row[0]) < found:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(found),))
        if found > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path}: catalog schema version {found} is newer than this tierfs "
                f"supports ({SCHEMA_VERSION}); upgrade tierfs or point state_dir elsewhere",
                path=str(self.path),
                errno=errno.EPROTO,
            )

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    # Files -----------------------------------------------------------------------------

    def sync_file(self, store: str, relpath: str, ident: FileIdentity) -> FileRecord:
        """Record a cold file's identity, dropping what no longer holds for it.

        When the identity differs from the recorded one the file changed underneath: its
        hash is forgotten and its replicas are marked ``evicting`` so that the mover
        deletes them and no reader is served stale bytes.

        Args:
            store: the cold store's name.
            relpath: the file's path inside the namespace.
            ident: its identity now.
        """
        with self._tx() as db:
            record = self._file_where(db, "store = ? AND relpath = ?", (store, relpath))
            if record is None:
                db.execute(
                    "INSERT INTO files (store, relpath, size, mtime_ns, ctime_ns, ino, dev)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (store, relpath, *_ident_row(ident)),
                )
            elif record.identity != ident:
                log.warning(
                    "%s:%s changed underneath (size %d -> %d); dropping its hot copies",
                    store,
                    relpath,
                    record.size,
                    ident.size,
                )
                db.execute(
                    "UPDATE files SET size = ?, mtime_ns = ?, ctime_ns = ?, ino = ?, dev = ?,"
                    " xxh3 = NULL WHERE id = ?",
                    (*_ident_row(ident), record.id),
                )
                db.execute(
                    "UPDATE replicas SET state = 'evicting', updated = ? WHERE file_id = ?",
                    (time.time(), record.id),
                )
            record = self._file_where(db, "store = ? AND relpath = ?", (store, relpath))
        assert record is not None
        return record

    def file(self, file_id: int) -> FileRecord | None:
        with self._lock:
            return self._file_where(self._db, "id = ?", (file_id,))

    def file_by_path(self, store: str, relpath: str) -> FileRecord | None:
        with self._lock:
            return self._file_where(self._db, "store = ? AND relpath = ?", (store, relpath))

    def files(self) -> list[FileRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files ORDER BY id").fetchall()
        return [FileRecord(*row) for row in rows]

    def set_hash(self, file_id: int, ident: FileIdentity, xxh3: str) -> bool:
        """Record a content hash, unless the file's identity changed since it was read.

        Returns:
            Whether the hash was recorded.
        """
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE files SET xxh3 = ? WHERE id = ? AND {_IDENT_MATCH}",
                (xxh3, file_id, *_ident_row(ident)),
            )
            return cur.rowcount == 1

    def forget_files(self, file_ids: Iterable[int]) -> None:
        """Drop files that left every cold store, with their replicas."""
        with self._tx() as db:
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in file_ids])

    def record_access(self, deltas: Iterable[AccessDelta]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE files SET opens = opens + ?, bytes_read = bytes_read + ?,"
                " last_access = MAX(COALESCE(last_access, 0), ?) WHERE id = ?",
                [(d.opens, d.bytes_read, d.last_access, d.file_id) for d in deltas],
            )

    @staticmethod
    def _file_where(
        db: sqlite3.Connection, where: str, args: tuple[object, ...]
    ) -> FileRecord | None:
        row = db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE {where}", args).fetchone()
        return FileRecord(*row) if row else None

    # Replicas --------------------------------------------------------------------------

    def replicas(self, file_id: int | None = None) -> list[Replica]:
        query = f"SELECT {_REPLICA_COLUMNS} FROM replicas"
        args: tuple[object, ...] = ()
        if file_id is not None:
            query += " WHERE file_id = ?"
            args = (file_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY file_id, tier", args).fetchall()
        return [_replica(row) for row in rows]

    def begin_copy(self, file_id: int, tier: str, path: str, size: int) -> bool:
        """Claim a file for copying onto a tier.

        Returns:
            False when the file already has a replica on that tier in any state: at most
            one copy job runs per file and tier.
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO replicas (file_id, tier, path, state, size, updated)"
                " VALUES (?, ?, ?, 'copying', ?, ?)",
                (file_id, tier, path, size, time.time()),
            )
            return cur.rowcount == 1

    def finish_copy(self, file_id: int, tier: str, xxh3: str, ident: FileIdentity) -> bool:
        """Mark a verified copy hot and record the file's hash, in one transaction.

        Returns:
            False when the claim vanished meanwhile (demoted, or the cold file changed);
            the caller must then delete the copy it made.
        """
        with self._tx() as db:
            current = self._file_where(db, "id = ?", (file_id,))
            if current is None or current.identity != ident:
                return False
            cur = db.execute(
                "UPDATE replicas SET state = 'hot', updated = ?"
                " WHERE file_id = ? AND tier = ? AND state = 'copying'",
                (time.time(), file_id, tier),
            )
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE files SET xxh3 = ? WHERE id = ?", (xxh3, file_id))
            return True

    def begin_evict(self, file_id: int, tier: str) -> Replica | None:
        """Move a replica to ``evicting``; new opens stop using it at once."""
        with self._tx() as db:
            db.execute(
                "UPDATE replicas SET state = 'evicting', updated = ?"
                " WHERE file_id = ? AND tier = ?",
                (time.time(), file_id, tier),
            )
            row = db.execute(
                f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE file_id = ? AND tier = ?",
                (file_id, tier),
            ).fetchone()
        return _replica(row) if row else None

    def drop_replica(self, file_id: int, tier: str) -> None:
        """Forget a replica whose file is gone from the tier (or never got there)."""
        with self._tx() as db:
            db.execute("DELETE FROM replicas WHERE file_id = ? AND tier = ?", (file_id, tier))

    def tier_usage(self) -> dict[str, int]:
        """Bytes claimed on each tier by replicas in any state."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tier, COALESCE(SUM(size), 0) FROM replicas GROUP BY tier"
            ).fetchall()
        return {tier: int(total) for tier, total in rows}

    # Pins and model events -------------------------------------------------------------

    def pin(self, model: str, tier: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO pins (model, tier, created) VALUES (?, ?, ?)"
                " ON CONFLICT (model) DO UPDATE SET tier = excluded.tier",
                (model, tier, time.time()),
            )

    def unpin(self, model: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM pins WHERE model = ?", (model,)).rowcount == 1

    def pins(self) -> dict[str, str | None]:
        with self._lock:
            rows = self._db.execute("SELECT model, tier FROM pins ORDER BY model").fetchall()
        return {model: tier for model, tier in rows}

    def note_demoted(self, model: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO model_events (model, last_demoted) VALUES (?, ?)"
                " ON CONFLICT (model) DO UPDATE SET last_demoted = excluded.last_demoted",
                (model, time.time()),
            )

    def set_cold_reason(self, model: str, reason: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO model_events (model, cold_reason) VALUES (?, ?)"
                " ON CONFLICT (model) DO UPDATE SET cold_reason = excluded.cold_reason",
                (model, reason),
            )

    def model_events(self) -> dict[str, tuple[float | None, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT model, last_demoted, cold_reason FROM model_events"
            ).fetchall()
        return {model: (demoted, reason) for model, demoted, reason in rows}

    def integrity_check(self) -> list[str]:
        """SQLite's own consistency check; an empty list means sound."""
        with self._lock:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
        problems = [row[0] for row in rows if row[0] != "ok"]
        with self._lock:
            rows = self._db.execute("PRAGMA foreign_key_check").fetchall()
        problems += [f"dangling reference in {row[0]} rowid {row[1]}" for row in rows]
        return problems


_FILE_COLUMNS = (
    "id, store, relpath, size, mtime_ns, xxh3, last_access, opens, bytes_read, ctime_ns, ino, dev"
)
_IDENT_MATCH = "size = ? AND mtime_ns = ? AND ctime_ns = ? AND ino = ? AND dev = ?"


def _ident_row(ident: FileIdentity) -> tuple[int, int, int, int, int]:
    return (ident.size, ident.mtime_ns, ident.ctime_ns, ident.ino, ident.dev)


_REPLICA_COLUMNS = "file_id, tier, path, state, size, updated"


def _replica(row: tuple[object, ...]) -> Replica:
    file_id, tier, path, state, size, updated = row
    return Replica(
        file_id=int(file_id),  # type: ignore[call-overload]
        tier=str(tier),
        path=str(path),
        state=ReplicaState(str(state)),
        size=int(size),  # type: ignore[call-overload]
        updated=float(updated),  # type: ignore[arg-type]
    )
