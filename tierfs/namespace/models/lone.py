"""Lone weight files (``.gguf``, ``.safetensors``) that belong to no other unit."""

from __future__ import annotations

from tierfs.namespace.models.context import ScanContext, UnitBroken
from tierfs.namespace.models.units import Model, ModelKind

LONE_SUFFIXES = (".gguf", ".safetensors")


def is_lone_file(name: str) -> bool:
    """Whether a file of this name, outside any other unit, is a unit of its own."""
    return name.endswith(LONE_SUFFIXES)


def scan_lone_file(ctx: ScanContext, rel: str) -> None:
    """Add the file at ``rel`` as a unit named by its path."""
    try:
        ctx.add(Model(rel, ModelKind.FILE, rel, (rel,), ctx.size_of(rel)))
    except UnitBroken as e:
        ctx.problems.append(e.problem)
