"""What is in the namespace: models, name conflicts and malformed units.

Used by ``tierfs status`` without a running mount, and by the daemon for its own view.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierfs.config import Config
from tierfs.namespace.merge import ColdStore, Conflict, Namespace, NamespaceTreeView
from tierfs.namespace.models import Model, ModelProblem, scan_models


@dataclass(frozen=True)
class Inventory:
    """The models found, the conflicts between stores, and units that could not be read."""

    models: tuple[Model, ...]
    problems: tuple[ModelProblem, ...]
    conflicts: tuple[Conflict, ...]


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
