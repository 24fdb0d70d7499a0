"""What a scan finds: model units, malformed units, and the errors of looking one up."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from tierfs.errors import TierfsError


class ModelKind(StrEnum):
    """Layout a model unit was recognised from."""

    HF_DIR = "hf_dir"
    HF_HUB = "hf_hub"
    OLLAMA = "ollama"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class Model:
    """One unit tierfs can list, promote and pin.

    Attributes:
        name: unique display name (see `tierfs.namespace.models.naming` for the rules).
        kind: layout the unit was recognised from.
        root: relative path identifying the unit: the directory (hf_dir), the snapshot
            directory (hf_hub), the manifest (ollama) or the file itself (file).
        files: sorted, deduplicated relative paths of the regular files holding its bytes.
        size: total size in bytes of ``files``.
        links: symlinks that belong to the unit (hub snapshot entries), sorted.
        aliases: other names :func:`find_model` accepts for this unit.
        revision: commit hash of a hub snapshot.
        refs: hub refs (``main``, ``pr/1``...) that point at this snapshot.
    """

    name: str
    kind: ModelKind
    root: str
    files: tuple[str, ...]
    size: int
    links: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    revision: str | None = None
    refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelProblem:
    """Something in the tree that looks like a model unit but is malformed."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Outcome of :func:`scan_models`: models sorted by name, problems sorted by path."""

    models: tuple[Model, ...]
    problems: tuple[ModelProblem, ...] = field(default_factory=tuple)


class ModelError(TierfsError):
    """Base of the errors of model recognition and lookup."""


class ModelNotFoundError(ModelError):
    """No model matches the requested name; ``candidates`` lists near names."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        hint = f"; did you mean: {', '.join(candidates)}" if candidates else ""
        super().__init__(f"no model named {name!r}{hint}", path=name, errno=errno.ENOENT)
        self.candidates = tuple(candidates)


class AmbiguousModelError(ModelError):
    """Several models match the requested name; ``candidates`` lists all of them."""

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        super().__init__(
            f"model name {name!r} is ambiguous: {', '.join(candidates)}",
            path=name,
            errno=errno.EINVAL,
        )
        self.candidates = tuple(candidates)
