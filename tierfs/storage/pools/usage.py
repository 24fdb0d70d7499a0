"""What each model holds on a pool, from the catalog: what leaves first when it shrinks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tierfs.namespace.models import Model
from tierfs.storage.catalog import Catalog


@dataclass(frozen=True)
class ModelUse:
    """A model's bytes on one pool (any replica state) and when it was last read."""

    name: str
    size: int
    last_access: float


def models_on(catalog: Catalog, pool: str, models: Iterable[Model]) -> list[ModelUse]:
    """The models with bytes on `pool`, least recently used first.

    Blocking (SQLite): call it from a worker thread.
    """
    files = {f.id: f for f in catalog.files()}
    held: dict[str, int] = {}
    for replica in catalog.replicas():
        record = files.get(replica.file_id)
        if replica.tier == pool and record is not None:
            held[record.relpath] = held.get(record.relpath, 0) + replica.size
    last = {f.relpath: f.last_access or 0.0 for f in files.values()}
    out = []
    for model in models:
        size = sum(held.get(path, 0) for path in model.files)
        if size:
            used = max((last.get(path, 0.0) for path in model.files), default=0.0)
            out.append(ModelUse(model.name, size, used))
    return sorted(out, key=lambda u: (u.last_access, u.name))


def copies_on(catalog: Catalog, pool: str) -> int:
    """How many replicas the catalog has on `pool`, in any state."""
    return sum(1 for r in catalog.replicas() if r.tier == pool)
