"""What is in the namespace: models, name conflicts and malformed units.

Used by ``tierfs status`` without a running mount, and by the daemon for its own view.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from tierfs.config import Config
from tierfs.models import Model, ModelProblem, scan_models
from tierfs.namespace import ColdStore, Conflict, Namespace, NamespaceTreeView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inventory:
    """The models found, the conflicts between stores, and units that could not be read."""

    models: tuple[Model, ...]
    problems: tuple[ModelProblem, ...]
    conflicts: tuple[Conflict, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m.name,
                    "kind": str(m.kind),
                    "root": m.root,
                    "size": m.size,
                    "files": list(m.files),
                    "aliases": list(m.aliases),
                }
                for m in self.models
            ],
            "problems": [asdict(p) for p in self.problems],
            "conflicts": [asdict(c) for c in self.conflicts],
        }


def namespace_for(config: Config) -> Namespace:
    """A namespace over the config's cold stores, outside any mount."""
    return Namespace([ColdStore(c.name, c.path) for c in config.cold])


def take_inventory(namespace: Namespace) -> Inventory:
    """Scan the whole namespace for models (blocking: call from a worker thread)."""
    result = scan_models(NamespaceTreeView(namespace))
    return Inventory(
        models=tuple(result.models),
        problems=tuple(result.problems),
        conflicts=tuple(namespace.conflicts()),
    )
