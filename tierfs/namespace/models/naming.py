"""The names a scan gives model units, and how colliding names are told apart.

An HF directory and a lone file are named by their relative path (``"."`` for the tree
root); a hub snapshot ``org/name@<rev[:12]>``; an Ollama manifest ``host/ns/model:tag``
with ``registry.ollama.ai/library/`` dropped. Colliding names are qualified as
``name~root``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tierfs.namespace.models.units import Model

OLLAMA_DEFAULT_PREFIX = "registry.ollama.ai/library/"
OLLAMA_DEFAULT_HOST = "registry.ollama.ai/"


def hub_repo_id(dirname: str) -> str:
    """Repo id (``org/name``) of a hub cache directory name such as ``models--org--name``."""
    body = dirname.split("--", 1)[1] if "--" in dirname else dirname
    return body.replace("--", "/")


def hub_model_name(repo_dirname: str, revision: str) -> str:
    """Name a scan gives a hub snapshot: ``org/name@<first 12 of revision>``."""
    return f"{hub_repo_id(repo_dirname)}@{revision[:12]}"


def ollama_model_name(host: str, namespace: str, model: str, tag: str) -> str:
    """Name a scan gives an Ollama manifest, shortened the way ollama prints it."""
    full = f"{host}/{namespace}/{model}:{tag}"
    if full.startswith(OLLAMA_DEFAULT_PREFIX):
        return full[len(OLLAMA_DEFAULT_PREFIX) :]
    if full.startswith(OLLAMA_DEFAULT_HOST):
        return full[len(OLLAMA_DEFAULT_HOST) :]
    return full


def unique_names(models: Iterable[Model]) -> list[Model]:
    """The models, sorted by name, with every name that several share qualified by root.

    Same name from different places (two caches holding one repo): every one of them is
    renamed ``name~root``, and keeps the bare name as an alias that `find_model` reports
    as ambiguous.
    """
    by_name: dict[str, list[Model]] = {}
    for m in models:
        by_name.setdefault(m.name, []).append(m)
    final: list[Model] = []
    taken = {name for name, group in by_name.items() if len(group) == 1}
    for name, group in by_name.items():
        if len(group) == 1:
            final.append(group[0])
            continue
        for m in sorted(group, key=lambda m: m.root):
            new = f"{name}~{m.root}"
            n = 2
            while new in taken:
                new = f"{name}~{m.root}~{n}"
                n += 1
            taken.add(new)
            final.append(
                Model(
                    name=new,
                    kind=m.kind,
                    root=m.root,
                    files=m.files,
                    size=m.size,
                    links=m.links,
                    aliases=(name, *m.aliases),
                    revision=m.revision,
                    refs=m.refs,
                )
            )
    final.sort(key=lambda m: m.name)
    return final
