"""HF hub cache repos: ``models--org--name/{snapshots/<rev>, refs, blobs}``; one unit per
snapshot, named ``org/name@<rev[:12]>``, with the refs that point at it as aliases.
"""

from __future__ import annotations

import logging

from tierfs.namespace.models.context import ScanContext, UnitBroken, join, split
from tierfs.namespace.models.naming import hub_model_name, hub_repo_id
from tierfs.namespace.models.tree import EntryKind
from tierfs.namespace.models.units import Model, ModelKind, ModelProblem

log = logging.getLogger(__name__)

HUB_MODEL_PREFIX = "models--"
# Hub repos of these types share the cache layout but hold no models; their contents must not
# surface as lone files either.
HUB_OTHER_PREFIXES = ("datasets--", "spaces--")
#: Upper bound on a hub ref file; real ones hold a 40-character hash.
MAX_REF_BYTES = 256


def scan_hub_repo(ctx: ScanContext, rel: str) -> None:
    """Add one unit per non-empty snapshot of the hub repo at ``rel``."""
    repo_dir = split(rel)[1]
    refs = _hub_refs(ctx, rel)
    snapshots = join(rel, "snapshots")
    for rev, kind in sorted(ctx.listing.get(snapshots, {}).items()):
        snap = join(snapshots, rev)
        if kind is not EntryKind.DIR or snap not in ctx.listing:
            continue
        files: set[str] = set()
        links: set[str] = set()
        try:
            _collect_snapshot(ctx, snap, files, links)
            if not files:
                log.debug("skipping empty hub snapshot %s", snap)
                continue
            size = sum(ctx.size_of(f) for f in files)
        except UnitBroken as e:
            ctx.problems.append(e.problem)
            continue
        repo_id = hub_repo_id(repo_dir)
        ref_names = tuple(sorted(r for r, target in refs.items() if target == rev))
        aliases = [f"{repo_id}@{rev}"] + [f"{repo_id}@{r}" for r in ref_names]
        if "main" in ref_names:
            aliases.append(repo_id)
        model = Model(
            name=hub_model_name(repo_dir, rev),
            kind=ModelKind.HF_HUB,
            root=snap,
            files=tuple(sorted(files)),
            size=size,
            links=tuple(sorted(links)),
            aliases=tuple(aliases),
            revision=rev,
            refs=ref_names,
        )
        ctx.add(model)


def _hub_refs(ctx: ScanContext, repo: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    stack = [join(repo, "refs")]
    while stack:
        rel = stack.pop()
        for name, kind in ctx.listing.get(rel, {}).items():
            path = join(rel, name)
            if kind is EntryKind.DIR:
                stack.append(path)
                continue
            if kind is not EntryKind.FILE:
                # Reading through a symlink could leave the tree; real refs are plain files.
                ctx.problems.append(ModelProblem(path, "hub ref is not a regular file"))
                continue
            try:
                value = ctx.view.read_text(path, MAX_REF_BYTES).strip()
            except (OSError, UnicodeDecodeError) as e:
                ctx.problems.append(ModelProblem(path, f"cannot read hub ref: {e}"))
                continue
            ref_name = path[len(repo) + len("/refs/") :]
            refs[ref_name] = value
    return refs


def _collect_snapshot(ctx: ScanContext, rel: str, files: set[str], links: set[str]) -> None:
    for name, kind in ctx.listing.get(rel, {}).items():
        path = join(rel, name)
        if kind is EntryKind.SYMLINK:
            links.add(path)
            files.add(ctx.resolve(path))
        elif kind is EntryKind.FILE:
            # Caches on filesystems without symlinks hold plain copies instead.
            files.add(path)
        elif kind is EntryKind.DIR and path in ctx.listing:
            _collect_snapshot(ctx, path, files, links)
