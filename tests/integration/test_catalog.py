"""The SQLite catalog: identities, hashes, replica states, pins, schema versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tierfs.errors import CatalogError
from tierfs.namespace.identity import FileIdentity
from tierfs.storage.catalog import SCHEMA_VERSION, Catalog
from tierfs.storage.catalog_pools import PoolRecord
from tierfs.storage.records import AccessDelta, ReplicaState


def ident(size: int, mtime_ns: int, ino: int = 7) -> FileIdentity:
    return FileIdentity(size=size, mtime_ns=mtime_ns, ctime_ns=mtime_ns, ino=ino, dev=1)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "state" / "catalog.sqlite")


def test_catalog_is_wal_and_versioned(catalog: Catalog) -> None:
    db = sqlite3.connect(catalog.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert catalog.schema_version == SCHEMA_VERSION
    assert catalog.integrity_check() == []


def test_a_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Catalog(path)


def test_a_file_that_is_not_a_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(CatalogError, match="not a usable catalog"):
        Catalog(path)


def test_sync_file_keeps_identity_and_hash(catalog: Catalog) -> None:
    first = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    assert catalog.set_hash(first.id, ident(10, 111), "ab" * 16)
    again = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    assert again.id == first.id
    assert again.xxh3 == "ab" * 16


def test_a_changed_cold_file_forgets_its_hash_and_hot_copies(catalog: Catalog) -> None:
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    assert catalog.begin_copy(record.id, "ram0", "/ram0/x", 10)
    assert catalog.finish_copy(record.id, "ram0", "cd" * 16, ident(10, 111))
    changed = catalog.sync_file("nfs", "m/a.bin", ident(12, 222))
    assert changed.xxh3 is None
    [replica] = catalog.replicas(record.id)
    assert replica.state is ReplicaState.EVICTING


def test_a_stale_hash_is_not_recorded(catalog: Catalog) -> None:
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    catalog.sync_file("nfs", "m/a.bin", ident(10, 999))
    assert not catalog.set_hash(record.id, ident(10, 111), "ef" * 16)
    assert catalog.file(record.id) is not None
    assert catalog.file(record.id).xxh3 is None  # type: ignore[union-attr]


def test_replica_states_move_forward_once(catalog: Catalog) -> None:
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    assert catalog.begin_copy(record.id, "ram0", "/ram0/x", 10)
    # At most one copy job per file and tier.
    assert not catalog.begin_copy(record.id, "ram0", "/ram0/x", 10)
    assert catalog.tier_usage() == {"ram0": 10}
    # A copy of a file that changed meanwhile is not accepted.
    assert not catalog.finish_copy(record.id, "ram0", "00" * 16, ident(10, 112))
    assert catalog.finish_copy(record.id, "ram0", "00" * 16, ident(10, 111))
    assert catalog.replicas(record.id)[0].state is ReplicaState.HOT
    evicting = catalog.begin_evict(record.id, "ram0")
    assert evicting is not None and evicting.state is ReplicaState.EVICTING
    catalog.drop_replica(record.id, "ram0")
    assert catalog.replicas(record.id) == []
    assert catalog.tier_usage() == {}


def test_access_statistics_accumulate(catalog: Catalog) -> None:
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    catalog.record_access([AccessDelta(record.id, 2, 100, 50.0)])
    catalog.record_access([AccessDelta(record.id, 1, 20, 40.0)])
    after = catalog.file(record.id)
    assert after is not None
    assert (after.opens, after.bytes_read, after.last_access) == (3, 120, 50.0)


def test_pins_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with Catalog(path) as catalog:
        catalog.pin("llama:8b", "ram0")
        catalog.pin("qwen", None)
        catalog.pin("llama:8b", "ram1")
        assert catalog.unpin("qwen")
        assert not catalog.unpin("qwen")
    with Catalog(path) as catalog:
        assert catalog.pins() == {"llama:8b": "ram1"}


def test_forgetting_a_file_drops_its_replicas(catalog: Catalog) -> None:
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111))
    catalog.begin_copy(record.id, "ram0", "/ram0/x", 10)
    catalog.forget_files([record.id])
    assert catalog.replicas() == []
    assert catalog.integrity_check() == []


def test_a_file_replaced_with_the_same_size_and_mtime_is_a_changed_file(catalog: Catalog) -> None:
    # rename over the old name after `touch -r`: only the inode (and ctime) tell.
    record = catalog.sync_file("nfs", "m/a.bin", ident(10, 111, ino=7))
    assert catalog.begin_copy(record.id, "ram0", "/ram0/x", 10)
    assert catalog.finish_copy(record.id, "ram0", "cd" * 16, ident(10, 111, ino=7))
    changed = catalog.sync_file("nfs", "m/a.bin", ident(10, 111, ino=8))
    assert changed.xxh3 is None
    [replica] = catalog.replicas(record.id)
    assert replica.state is ReplicaState.EVICTING


def test_a_version_1_catalog_is_migrated_and_its_copies_count_as_changed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE files (
            id INTEGER PRIMARY KEY, store TEXT NOT NULL, relpath TEXT NOT NULL,
            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, xxh3 TEXT, last_access REAL,
            opens INTEGER NOT NULL DEFAULT 0, bytes_read INTEGER NOT NULL DEFAULT 0,
            UNIQUE (store, relpath));
        INSERT INTO files (store, relpath, size, mtime_ns, xxh3) VALUES ('nfs', 'a', 10, 111, 'ab');
        """
    )
    db.commit()
    db.close()
    with Catalog(path) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION
        [old] = catalog.files()
        assert old.identity == FileIdentity(10, 111, 0, 0, 0)
        assert catalog.sync_file("nfs", "a", ident(10, 111)).xxh3 is None


def test_a_version_2_catalog_gains_the_pools_table(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with Catalog(path):
        pass
    db = sqlite3.connect(path)
    db.execute("DROP TABLE pools")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with Catalog(path) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION == 3
        assert catalog.pool_records() == {}
        record = PoolRecord("ram0", "disconnecting", "disconnect", "demote", 8 << 20, None)
        catalog.set_pool(record)
    with Catalog(path) as catalog:
        assert catalog.pool_records() == {"ram0": record}
