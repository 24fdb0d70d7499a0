"""A scan of a tree for model units, in three phases.

One walk lists every real (non-symlink, non-hidden) directory; a classification pass over
those listings, which needs no I/O, hands each unit to its layout's module; the layouts
then stat only the files that belong to a unit.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from tierfs.namespace.models.context import ScanContext, join, split
from tierfs.namespace.models.hf_dir import is_hf_dir, scan_hf_dir
from tierfs.namespace.models.hub import HUB_MODEL_PREFIX, HUB_OTHER_PREFIXES, scan_hub_repo
from tierfs.namespace.models.lone import is_lone_file, scan_lone_file
from tierfs.namespace.models.naming import unique_names
from tierfs.namespace.models.ollama import scan_ollama_store
from tierfs.namespace.models.tree import DirectoryTreeView, EntryKind, TreeView
from tierfs.namespace.models.units import ModelError, ModelProblem, ScanResult

log = logging.getLogger(__name__)

#: Directory depth beyond which the walk stops descending.
MAX_DEPTH = 64


def _walk(ctx: ScanContext) -> None:
    stack: list[tuple[str, int]] = [(ctx.root, 0)]
    while stack:
        rel, depth = stack.pop()
        try:
            entries = ctx.view.listdir(rel)
        except OSError as e:
            ctx.problems.append(ModelProblem(rel, f"cannot list directory: {e}"))
            continue
        names = {name: kind for name, kind in entries}
        ctx.listing[rel] = names
        if depth >= MAX_DEPTH:
            log.warning("not descending below %s: deeper than %d levels", rel, MAX_DEPTH)
            continue
        for name, kind in names.items():
            # Hidden dirs hold VCS objects, download metadata and lock files; descending
            # would both cost time and surface duplicate copies of weights.
            if kind is EntryKind.DIR and not name.startswith("."):
                stack.append((join(rel, name), depth + 1))


def _classify(ctx: ScanContext) -> None:
    lone: list[str] = []
    # "claimed" marks directories inside an HF model directory: their files belong to
    # that unit, but they may still hold nested units of their own.
    stack: list[tuple[str, bool]] = [(ctx.root, False)]
    while stack:
        rel, claimed = stack.pop()
        entries = ctx.listing.get(rel)
        if entries is None:
            continue
        name = split(rel)[1]
        if entries.get("manifests") is EntryKind.DIR and entries.get("blobs") is EntryKind.DIR:
            scan_ollama_store(ctx, rel)
            continue
        if name.startswith(HUB_MODEL_PREFIX) and entries.get("snapshots") is EntryKind.DIR:
            scan_hub_repo(ctx, rel)
            continue
        if name.startswith(HUB_OTHER_PREFIXES) and entries.get("snapshots") is EntryKind.DIR:
            continue
        if is_hf_dir(entries):
            scan_hf_dir(ctx, rel)
            claimed = True
        for child, kind in entries.items():
            path = join(rel, child)
            if kind is EntryKind.DIR:
                stack.append((path, claimed))
            elif not claimed and kind is EntryKind.FILE and is_lone_file(child):
                lone.append(path)
    for path in lone:
        scan_lone_file(ctx, path)


def scan_models(view: TreeView, root: str = "") -> ScanResult:
    """Find every model unit under ``root`` of ``view``.

    Naming (see `tierfs.namespace.models.naming`): an HF directory and a lone file are
    named by their relative path (``"."`` for the tree root); a hub snapshot
    ``org/name@<rev[:12]>`` (aliases: full revision, each ref that points at it, and bare
    ``org/name`` for ``refs/main``); an Ollama manifest ``host/ns/model:tag`` with
    ``registry.ollama.ai/library/`` dropped (alias: bare model for ``:latest``). Colliding
    names are qualified as ``name~root``.

    Malformed units (bad JSON, missing blobs, symlinks that leave the tree...) are left out and
    reported in ``problems``; they never abort the scan. Hidden directories are skipped.

    Args:
        view: the tree to scan.
        root: relative path of the subtree to scan; links out of it count as leaving the tree.

    Raises:
        ModelError: if ``root`` itself cannot be listed.
    """
    ctx = ScanContext(view, root)
    _walk(ctx)
    if ctx.root not in ctx.listing:
        raise ModelError(f"cannot list {root!r}", path=root, errno=errno.ENOENT)
    _classify(ctx)
    problems = sorted(set(ctx.problems), key=lambda p: (p.path, p.message))
    result = ScanResult(tuple(unique_names(ctx.models)), tuple(problems))
    log.info(
        "scanned %r: %d models, %d problems, %d directories",
        root,
        len(result.models),
        len(result.problems),
        len(ctx.listing),
    )
    return result


def scan_directory(path: Path) -> ScanResult:
    """Shorthand for ``scan_models(DirectoryTreeView(path))``.

    Raises:
        ModelError: if ``path`` cannot be listed.
    """
    return scan_models(DirectoryTreeView(path))
