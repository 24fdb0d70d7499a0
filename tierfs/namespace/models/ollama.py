"""Ollama stores: ``manifests/<host>/<ns>/<model>/<tag>`` JSON manifests whose layers name
``blobs/sha256-<hex>``; one unit per manifest.
"""

from __future__ import annotations

import re

from tierfs.namespace.models.context import ScanContext, UnitBroken, join
from tierfs.namespace.models.naming import ollama_model_name
from tierfs.namespace.models.tree import EntryKind
from tierfs.namespace.models.units import Model, ModelKind, ModelProblem

_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


def scan_ollama_store(ctx: ScanContext, rel: str) -> None:
    """Add one unit per well-formed manifest of the Ollama store at ``rel``."""
    manifests = join(rel, "manifests")
    stack: list[tuple[str, tuple[str, ...]]] = [(manifests, ())]
    while stack:
        d, parts = stack.pop()
        for name, kind in ctx.listing.get(d, {}).items():
            path = join(d, name)
            if name.startswith("."):
                continue
            if kind is EntryKind.DIR and len(parts) < 3:
                stack.append((path, (*parts, name)))
            elif len(parts) == 3 and kind in (EntryKind.FILE, EntryKind.SYMLINK):
                host, namespace, model = parts
                try:
                    ctx.add(_manifest(ctx, rel, path, host, namespace, model, name))
                except UnitBroken as e:
                    ctx.problems.append(e.problem)
            else:
                ctx.problems.append(
                    ModelProblem(
                        path, "unexpected entry; manifests live at <host>/<ns>/<model>/<tag>"
                    )
                )


def _manifest(
    ctx: ScanContext, store: str, path: str, host: str, namespace: str, model: str, tag: str
) -> Model:
    doc = ctx.read_json(path)
    if not isinstance(doc, dict):
        raise UnitBroken(path, "manifest is not a JSON object")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise UnitBroken(path, "manifest has no 'layers' list")
    descriptors: list[tuple[str, object]] = [(f"layers[{i}]", x) for i, x in enumerate(layers)]
    if "config" in doc:
        descriptors.append(("config", doc["config"]))
    files = {ctx.resolve(path)}
    for where, desc in descriptors:
        if not isinstance(desc, dict):
            raise UnitBroken(path, f"{where} is not an object")
        digest = desc.get("digest")
        m = _DIGEST_RE.match(digest) if isinstance(digest, str) else None
        if m is None:
            raise UnitBroken(path, f"{where} has a malformed digest {digest!r}")
        blob = join(store, f"blobs/sha256-{m.group(1)}")
        try:
            target = ctx.resolve(blob)
        except UnitBroken as e:
            raise UnitBroken(path, f"{where}: blob {digest} is missing ({e})") from e
        declared = desc.get("size")
        actual = ctx.size_of(target)
        if isinstance(declared, int) and declared != actual:
            raise UnitBroken(
                path, f"{where}: blob {digest} is {actual} bytes, manifest says {declared}"
            )
        files.add(target)
    full = f"{host}/{namespace}/{model}:{tag}"
    name = ollama_model_name(host, namespace, model, tag)
    aliases = [full] if full != name else []
    if tag == "latest":
        # ollama itself treats a bare model name as its :latest tag.
        aliases.append(name[: -len(":latest")])
    return Model(
        name=name,
        kind=ModelKind.OLLAMA,
        root=path,
        files=tuple(sorted(files)),
        size=sum(ctx.size_of(f) for f in files),
        aliases=tuple(aliases),
    )
