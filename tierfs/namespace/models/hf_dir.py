"""HF model directories: a ``config.json`` next to weights; subdirectories belong to it."""

from __future__ import annotations

from collections.abc import Mapping

from tierfs.namespace.models.context import ScanContext, UnitBroken, join
from tierfs.namespace.models.tree import EntryKind
from tierfs.namespace.models.units import Model, ModelKind

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Files whose names look like weights but that HF training writes next to any checkpoint.
_NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"})


def _is_weight_name(name: str) -> bool:
    return (name.endswith(WEIGHT_SUFFIXES) and name not in _NOT_WEIGHTS) or name.endswith(
        ".index.json"
    )


def is_hf_dir(entries: Mapping[str, EntryKind]) -> bool:
    """Whether a directory listing is that of an HF model directory."""
    return "config.json" in entries and any(_is_weight_name(n) for n in entries)


def scan_hf_dir(ctx: ScanContext, rel: str) -> None:
    """Add the HF model directory at ``rel``, or record why it is malformed."""
    try:
        config = ctx.read_json(join(rel, "config.json"))
        if not isinstance(config, dict):
            raise UnitBroken(join(rel, "config.json"), "config.json is not a JSON object")
        files: set[str] = set()
        links: set[str] = set()
        _collect_dir(ctx, rel, files, links, top=True)
        size = sum(ctx.size_of(f) for f in files)
    except UnitBroken as e:
        ctx.problems.append(e.problem)
        return
    name = rel or "."
    ctx.add(Model(name, ModelKind.HF_DIR, rel, tuple(sorted(files)), size))


def _collect_dir(
    ctx: ScanContext, rel: str, files: set[str], links: set[str], *, top: bool
) -> None:
    entries = ctx.listing.get(rel, {})
    if not top and is_hf_dir(entries):
        # A nested model directory is its own unit, found by the scan's classification.
        return
    for name, kind in entries.items():
        path = join(rel, name)
        if kind is EntryKind.FILE:
            files.add(path)
        elif kind is EntryKind.SYMLINK:
            links.add(path)
            files.add(ctx.resolve(path))
        elif kind is EntryKind.DIR and path in ctx.listing:
            _collect_dir(ctx, path, files, links, top=False)
