"""Finding a model by what a user typed, and the models each file belongs to."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from tierfs.namespace.models.units import AmbiguousModelError, Model, ModelNotFoundError


def find_model(models: Iterable[Model], name: str) -> Model:
    """Resolve a user-typed model name.

    Tries, in order: an exact name, an exact alias, then a prefix of names and aliases. A step
    that matches exactly one model wins; one that matches several raises.

    Args:
        models: the models to search, e.g. ``scan_models(...).models``.
        name: what the user typed.

    Raises:
        AmbiguousModelError: several models match; ``candidates`` names them.
        ModelNotFoundError: nothing matches; ``candidates`` holds up to 5 near names.
    """
    pool = list(models)
    if not name.strip():
        raise ModelNotFoundError(name, [])
    for match in (
        lambda m: m.name == name,
        lambda m: name in m.aliases,
        lambda m: any(k.startswith(name) for k in (m.name, *m.aliases)),
    ):
        hits = [m for m in pool if match(m)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AmbiguousModelError(name, sorted(m.name for m in hits))
    keys: dict[str, str] = {}
    for m in pool:
        for k in (m.name, *m.aliases):
            keys.setdefault(k, m.name)
    near = difflib.get_close_matches(name, list(keys), n=10, cutoff=0.5)
    near += [k for k in keys if name and name in k]
    candidates = list(dict.fromkeys(keys[k] for k in near))[:5]
    raise ModelNotFoundError(name, candidates)


def models_by_file(models: Iterable[Model]) -> Mapping[str, tuple[str, ...]]:
    """Map every file and symlink of every model to the sorted names of the models using it.

    An Ollama blob shared by several manifests maps to all of them.
    """
    index: dict[str, set[str]] = {}
    for m in models:
        for path in (*m.files, *m.links):
            index.setdefault(path, set()).add(m.name)
    return {path: tuple(sorted(names)) for path, names in index.items()}
