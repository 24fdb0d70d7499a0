"""The state of one scan that every layout reads: the recorded listings, sizes and problems.

Symlinks are resolved lexically against the recorded listings, so a link can never lead a
layout outside the scanned subtree.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

from tierfs.namespace.models.tree import EntryKind, TreeView
from tierfs.namespace.models.units import Model, ModelProblem

log = logging.getLogger(__name__)

#: Upper bound on any JSON document (manifest, config, index) the scanner reads.
MAX_JSON_BYTES = 4 * 1024 * 1024
#: Symlink chains longer than this are treated as broken (also guards against loops).
MAX_LINK_HOPS = 8


class UnitBroken(Exception):
    """The unit under construction must be dropped with this problem (never leaves a scan)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.problem = ModelProblem(path, message)


def join(parent: str, name: str) -> str:
    """``parent/name``, or ``name`` at the root."""
    return f"{parent}/{name}" if parent else name


def split(rel: str) -> tuple[str, str]:
    """(parent, name) of a relative path."""
    parent, _, name = rel.rpartition("/")
    return parent, name


class ScanContext:
    """What one scan has seen so far, and the reads a layout may make on top of it.

    Args:
        view: the tree being scanned.
        root: relative path of the scanned subtree.
    """

    def __init__(self, view: TreeView, root: str) -> None:
        self.view = view
        self.root = root.strip("/")
        self.listing: dict[str, dict[str, EntryKind]] = {}
        self.problems: list[ModelProblem] = []
        self.models: list[Model] = []
        self._sizes: dict[str, int] = {}

    def size_of(self, rel: str) -> int:
        """Size of regular file ``rel``, stat'ed once per scan.

        Raises:
            UnitBroken: it cannot be stat'ed or is no longer a regular file.
        """
        cached = self._sizes.get(rel)
        if cached is not None:
            return cached
        try:
            kind, size = self.view.stat(rel)
        except OSError as e:
            raise UnitBroken(rel, f"cannot stat: {e}") from e
        if kind is not EntryKind.FILE:
            raise UnitBroken(rel, "is no longer a regular file")
        self._sizes[rel] = size
        return size

    def resolve(self, rel: str) -> str:
        """Follow ``rel`` to a regular file inside the scanned tree.

        Raises:
            UnitBroken: the chain is broken, too long, or leaves the tree.
        """
        origin = rel
        for _ in range(MAX_LINK_HOPS):
            parent, name = split(rel)
            entries = self.listing.get(parent)
            if entries is None:
                raise UnitBroken(
                    origin, f"symlink target {rel!r} is outside the scanned tree or hidden"
                )
            kind = entries.get(name)
            if kind is None:
                what = "symlink target" if rel != origin else "file"
                raise UnitBroken(origin, f"{what} {rel!r} does not exist")
            if kind is EntryKind.FILE:
                return rel
            if kind is not EntryKind.SYMLINK:
                raise UnitBroken(origin, f"{rel!r} is not a regular file")
            try:
                target = self.view.readlink(rel)
            except OSError as e:
                raise UnitBroken(origin, f"cannot read symlink {rel!r}: {e}") from e
            if target.startswith("/"):
                raise UnitBroken(origin, f"absolute symlink target {target!r} leaves the tree")
            joined = posixpath.normpath(posixpath.join(parent, target))
            if joined == ".." or joined.startswith("../"):
                raise UnitBroken(origin, f"symlink target {target!r} leaves the tree")
            rel = "" if joined == "." else joined
        raise UnitBroken(origin, f"more than {MAX_LINK_HOPS} symlink hops")

    def read_json(self, rel: str) -> Any:
        """The JSON document at ``rel`` (symlinks followed), at most `MAX_JSON_BYTES`.

        Raises:
            UnitBroken: it cannot be resolved, is too big, unreadable or not JSON.
        """
        target = self.resolve(rel)
        size = self.size_of(target)
        if size > MAX_JSON_BYTES:
            raise UnitBroken(rel, f"JSON document is {size} bytes, over {MAX_JSON_BYTES}")
        try:
            text = self.view.read_text(target, MAX_JSON_BYTES)
        except (OSError, UnicodeDecodeError) as e:
            raise UnitBroken(rel, f"cannot read: {e}") from e
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UnitBroken(rel, f"invalid JSON: {e}") from e

    def add(self, model: Model) -> None:
        """Record a recognised unit."""
        log.debug("found %s model %s at %s", model.kind, model.name, model.root)
        self.models.append(model)
