"""The status report: tiers, models and copies in flight, as one JSON-able dict.

The running daemon builds it for the control API (and so for the CLI and the web GUI);
``tierfs status`` builds the same report from the catalog when no mount runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tierfs.config import Config
from tierfs.errors import TierfsError
from tierfs.namespace.inventory import Inventory, take_inventory
from tierfs.namespace.merge import Namespace
from tierfs.namespace.nodes import Kind
from tierfs.states import JobState, ModelState
from tierfs.storage.catalog import Catalog
from tierfs.storage.records import ReplicaState


def tier_rows(config: Config, usage: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for tier in sorted(config.tier, key=lambda t: t.rank):
        used = usage.get(tier.name, 0)
        rows.append(
            {
                "name": tier.name,
                "path": str(tier.path),
                "kind": tier.kind,
                "rank": tier.rank,
                "size": tier.size,
                "used": used,
                "free": max(tier.size - used, 0),
                "mounted": os.path.ismount(tier.path),
            }
        )
    return rows


def build_report(
    config: Config,
    inventory: Inventory,
    catalog: Catalog,
    namespace: Namespace,
    *,
    jobs: Iterable[dict[str, Any]] = (),
    cold_reasons: dict[str, str] | None = None,
    last_access: dict[tuple[str, str], float] | None = None,
    running: bool,
) -> dict[str, Any]:
    """Assemble the status report (blocking: reads the catalog and resolves paths).

    Args:
        config: the mount's config.
        inventory: the models found in the namespace.
        catalog: the catalog.
        namespace: to map model files to their cold store.
        jobs: promotions, as `Job.to_json` renders them.
        cold_reasons: why a model stays cold, from the running mover.
        last_access: fresher access times than the catalog's, from the running daemon.
        running: whether a mount is serving.
    """
    records = {(r.store, r.relpath): r for r in catalog.files()}
    replicas: dict[int, list[tuple[str, ReplicaState, int]]] = {}
    for replica in catalog.replicas():
        replicas.setdefault(replica.file_id, []).append((replica.tier, replica.state, replica.size))
    pins = catalog.pins()
    events = catalog.model_events()
    jobs = list(jobs)
    active = {j["model"]: j for j in jobs if JobState(j["state"]).active}
    reasons = {m: r for m, (_, r) in events.items() if r}
    reasons.update(cold_reasons or {})
    models = []
    for model in inventory.models:
        hot_bytes = 0
        # Counted in files, not bytes: a model of empty files is hot once they all are.
        files = hot_files = 0
        tiers: set[str] = set()
        accessed = 0.0
        for relpath in model.files:
            try:
                node = namespace.resolve(relpath)
            except TierfsError:  # a vanished file is simply not hot
                continue
            if node.kind is not Kind.FILE:
                continue
            files += 1
            key = (node.store, node.relpath)
            record = records.get(key)
            accessed = max(
                accessed,
                (last_access or {}).get(key, 0.0),
                (record.last_access or 0.0) if record else 0.0,
            )
            if record is None:
                continue
            hot = [
                (t, size)
                for t, state, size in replicas.get(record.id, [])
                if state is ReplicaState.HOT
            ]
            if hot:
                hot_files += 1
                hot_bytes += hot[0][1]
                tiers.update(t for t, _ in hot)
        if model.name in active:
            model_state = ModelState.PROMOTING
        elif files and hot_files == files:
            model_state = ModelState.HOT
        elif hot_files:
            model_state = ModelState.PARTIAL
        else:
            model_state = ModelState.COLD
        models.append(
            {
                "name": model.name,
                "kind": str(model.kind),
                "root": model.root,
                "size": model.size,
                "files": list(model.files),
                "state": str(model_state),
                "tiers": sorted(tiers),
                "hot_bytes": hot_bytes,
                "pinned": model.name in pins,
                "pin_tier": pins.get(model.name),
                "last_access": accessed or None,
                "cold_reason": None if model_state is ModelState.HOT else reasons.get(model.name),
                "aliases": list(model.aliases),
            }
        )
    return {
        "running": running,
        "mountpoint": str(config.mountpoint),
        "cold": [{"name": c.name, "path": str(c.path)} for c in config.cold],
        "tiers": tier_rows(config, catalog.tier_usage()),
        "strategy": config.placement.strategy,
        "models": models,
        "jobs": jobs,
        "conflicts": [
            {"relpath": c.relpath, "winner": c.winner, "losers": list(c.losers)}
            for c in inventory.conflicts
        ],
        "problems": [{"path": p.path, "message": p.message} for p in inventory.problems],
    }


def offline_report(config: Config) -> dict[str, Any]:
    """The status report without a running mount, straight from the catalog.

    Raises:
        CatalogError: the catalog is unusable.
    """
    from tierfs.namespace.inventory import namespace_for

    namespace = namespace_for(config)
    inventory = take_inventory(namespace)
    path: Path = config.catalog_path
    if not path.exists():
        # Never mounted: report without creating a state directory as a side effect.
        from tempfile import TemporaryDirectory

        with TemporaryDirectory() as scratch, Catalog(Path(scratch) / "c.sqlite") as empty:
            return build_report(config, inventory, empty, namespace, running=False)
    with Catalog(path) as catalog:
        return build_report(config, inventory, catalog, namespace, running=False)
