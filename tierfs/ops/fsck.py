"""Checking the catalog against the tiers, and repairing what a crash left behind.

The same check runs at mount time (recovery after a clean stop or a ``kill -9``), by
``tierfs fsck`` without a mount, and inside a running mount through the control API.
The rules follow from the replica states:

- ``copying``: the copy never finished, or finished but was never accepted; the file is
  removed and the claim dropped. Temp files are removed.
- ``evicting``: the demotion did not finish; it is completed.
- ``hot``: adopted again when the file is there with the right size and its cold source
  still has the recorded identity (`tierfs.namespace.identity`); otherwise dropped. ``deep``
  re-hashes it and the cold file as it is now, and a copy whose hash differs from either
  is replaced by a fresh verified copy.
- Files on a tier that the catalog does not know are removed: nothing vouches for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tierfs.namespace.identity import FileIdentity
from tierfs.storage.catalog import Catalog
from tierfs.storage.copier import CopyError, copy_file, hash_file
from tierfs.storage.records import FileRecord, Replica, ReplicaState
from tierfs.storage.tiers import Tier, unlink_quietly

log = logging.getLogger(__name__)

COLD_GONE = "cold file is gone"


@dataclass(frozen=True)
class Finding:
    """One thing that was not as it should be, and what was done about it."""

    problem: str
    path: str
    action: str


@dataclass
class FsckReport:
    findings: list[Finding] = field(default_factory=list)
    replicas_checked: int = 0
    bytes_hashed: int = 0
    adopted: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, problem: str, path: str | Path, action: str) -> None:
        finding = Finding(problem, str(path), action)
        log.warning("fsck: %s: %s (%s)", finding.path, problem, action)
        self.findings.append(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "replicas_checked": self.replicas_checked,
            "bytes_hashed": self.bytes_hashed,
            "adopted": self.adopted,
            "findings": [asdict(f) for f in self.findings],
        }


def check(
    catalog: Catalog,
    tiers: Iterable[Tier],
    stores: dict[str, Path],
    *,
    deep: bool = False,
    repair: bool = True,
    live: bool = False,
    withdraw: Callable[[str, str], None] | None = None,
) -> FsckReport:
    """Check every replica and tier file, repairing what is wrong when `repair` is set.

    Blocking: call it from a worker thread inside the daemon.

    Args:
        catalog: the catalog.
        tiers: the prepared tiers.
        stores: cold store name -> root.
        deep: re-hash every hot copy and compare with the recorded hash.
        repair: fix what is found (otherwise only report it).
        live: the daemon is running. Its copies and demotions in flight (the replicas in
            ``copying`` or ``evicting``, and temp files) are its own and left alone; its
            recovery at start already dealt with any a crash left behind.
        withdraw: called with (store, relpath) before a hot copy is removed or replaced,
            so a running daemon stops serving it first.
    """
    report = FsckReport()
    tiers = list(tiers)
    tier_by_name = {t.name: t for t in tiers}
    for problem in catalog.integrity_check():
        report.add(f"catalog: {problem}", catalog.path, "needs manual repair")
    if not live:
        for tier in tiers:
            for temp in _files_under(tier.tmp_root):
                report.add("temp file of an interrupted copy", temp, _remove(temp, repair))
    # The files on the tiers are listed before the catalog is read: a copy renamed into
    # place was claimed before its rename, so every file listed here that a live daemon
    # is still copying has its claim among the replicas read below.
    on_tiers = [path for tier in tiers for path in _files_under(tier.hot_root)]
    records = {r.id: r for r in catalog.files()}
    known_paths: set[Path] = set()
    for replica in catalog.replicas():
        in_flight = replica.state in (ReplicaState.COPYING, ReplicaState.EVICTING)
        if live and in_flight:
            known_paths.add(Path(replica.path))
            continue
        report.replicas_checked += 1
        record = records.get(replica.file_id)
        replica_tier = tier_by_name.get(replica.tier)
        path = Path(replica.path)
        if record is None:
            continue  # unreachable: the foreign key cascades
        key = (record.store, record.relpath)
        if replica_tier is None:
            report.add(
                f"replica on unknown tier {replica.tier!r}", path, _drop(catalog, replica, repair)
            )
            continue
        if replica.state is ReplicaState.COPYING:
            report.add(
                "copy interrupted before it was accepted", path, _discard(catalog, replica, repair)
            )
            continue
        if replica.state is ReplicaState.EVICTING:
            report.add("demotion interrupted", path, _discard(catalog, replica, repair))
            continue
        hot_problem = _hot_problem(catalog, record, replica, stores, repair)
        if hot_problem is not None and live and not _still_hot(catalog, replica):
            continue  # demoted while we looked: the daemon took it away, nothing is wrong
        if hot_problem is not None:
            if withdraw and repair:
                withdraw(*key)
            report.add(hot_problem, path, _discard(catalog, replica, repair))
            if hot_problem == COLD_GONE and repair:
                # Nothing is left to serve or to copy again: forget the file itself.
                catalog.forget_files([record.id])
            continue
        known_paths.add(path)
        if deep:
            digest = hash_file(path)
            report.bytes_hashed += replica.size
            # The record says what was copied; the cold file says what must be served now.
            # A rewrite that forged the whole identity is still caught by the second.
            expected = record.xxh3
            cold_digest = _cold_hash(stores[record.store] / record.relpath)
            if cold_digest is not None:
                report.bytes_hashed += record.size
                expected = cold_digest
            if expected is not None and digest != expected:
                if withdraw and repair:
                    withdraw(*key)
                action = "reported"
                if repair:
                    action = _recopy(catalog, record, replica, replica_tier, stores)
                report.add(
                    f"hot copy is stale or corrupt (hash {digest}, cold {expected})", path, action
                )
                continue
        report.adopted += 1
    for path in on_tiers:
        # A file gone since the listing was removed above, or by the daemon: not a stray.
        if path not in known_paths and os.path.lexists(path):
            report.add("file on tier unknown to the catalog", path, _remove(path, repair))
    return report


def _still_hot(catalog: Catalog, replica: Replica) -> bool:
    return any(
        r.tier == replica.tier and r.state is ReplicaState.HOT
        for r in catalog.replicas(replica.file_id)
    )


def _hot_problem(
    catalog: Catalog,
    record: FileRecord,
    replica: Replica,
    stores: dict[str, Path],
    repair: bool,
) -> str | None:
    path = Path(replica.path)
    root = stores.get(record.store)
    if root is None:
        return f"cold store {record.store!r} is no longer configured"
    try:
        cold = os.stat(root / record.relpath)
    except FileNotFoundError:
        return COLD_GONE
    except OSError as exc:
        # An unreachable cold store (NFS down) says nothing against the hot copy.
        log.warning("fsck: cannot stat cold %s: %s", root / record.relpath, exc.strerror)
        cold = None
    if cold is not None and FileIdentity.of(cold) != record.identity:
        if repair:
            catalog.sync_file(record.store, record.relpath, FileIdentity.of(cold))
        return "cold file changed underneath"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "hot copy is missing"
    if st.st_size != replica.size or replica.size != record.size:
        return f"hot copy has {st.st_size} bytes, expected {record.size}"
    return None


def _cold_hash(source: Path) -> str | None:
    try:
        return hash_file(source)
    except OSError as exc:
        # An unreachable cold store says nothing against the hot copy.
        log.warning("fsck: cannot hash cold %s: %s", source, exc.strerror)
        return None


def _recopy(
    catalog: Catalog, record: FileRecord, replica: Replica, tier: Tier, stores: dict[str, Path]
) -> str:
    source = stores[record.store] / record.relpath
    try:
        result = copy_file(
            source, tier.temp_path(record.id), Path(replica.path), expected_size=record.size
        )
    except (CopyError, OSError) as exc:
        return f"replacing it failed: {exc}"
    if result.xxh3 != record.xxh3:
        # The cold bytes changed without their identity: they are what must be served.
        catalog.set_hash(record.id, record.identity, result.xxh3)
        return "replaced by a fresh verified copy of the cold file, whose hash changed"
    return "replaced by a fresh verified copy"


def _discard(catalog: Catalog, replica: Replica, repair: bool) -> str:
    if not repair:
        return "reported"
    unlink_quietly(Path(replica.path))
    catalog.drop_replica(replica.file_id, replica.tier)
    return "removed"


def _drop(catalog: Catalog, replica: Replica, repair: bool) -> str:
    if not repair:
        return "reported"
    catalog.drop_replica(replica.file_id, replica.tier)
    return "dropped from the catalog"


def _remove(path: Path, repair: bool) -> str:
    if not repair:
        return "reported"
    unlink_quietly(path)
    return "removed"


def _files_under(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(Path(dirpath) / name for name in files)
    return out
