"""What is in the namespace: models, name conflicts and malformed units.

Joins the merged namespace and model recognition: `NamespaceTreeView` lets the model
scanner read the merge. Used by ``tierfs status`` without a running mount, and by the
daemon for its own view.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from tierfs.config import Config
from tierfs.errors import NamespaceError
from tierfs.namespace.merge import Namespace
from tierfs.namespace.models import EntryKind, Model, ModelProblem, scan_models
from tierfs.namespace.nodes import ColdStore, Conflict, Kind, Node


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


class NamespaceTreeView:
    """The merged namespace seen through `tierfs.namespace.models.TreeView`, for model detection.

    Errors surface as ``OSError``, as the protocol asks.
    """

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace

    def _node(self, rel: str) -> Node:
        try:
            return self.namespace.resolve(rel)
        except NamespaceError as exc:
            raise OSError(exc.errno, str(exc), rel) from None

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        node = self._node(rel)
        try:
            children = self.namespace.listdir(node.inode)
        except NamespaceError as exc:
            raise OSError(exc.errno, str(exc), rel) from None
        return [(child.name, _ENTRY_KIND[child.kind]) for child in children]

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        node = self._node(rel)
        return _ENTRY_KIND[node.kind], node.attrs.size

    def readlink(self, rel: str) -> str:
        node = self._node(rel)
        if node.kind is not Kind.SYMLINK or node.target is None:
            raise OSError(errno.EINVAL, "not a symlink", rel)
        return node.target

    def read_text(self, rel: str, limit: int) -> str:
        node = self._node(rel)
        if node.kind is not Kind.FILE:
            raise OSError(errno.EISDIR if node.is_dir else errno.EINVAL, "not a file", rel)
        with open(node.source, "rb") as f:
            return f.read(limit).decode("utf-8")


_ENTRY_KIND = {Kind.FILE: EntryKind.FILE, Kind.DIR: EntryKind.DIR, Kind.SYMLINK: EntryKind.SYMLINK}
