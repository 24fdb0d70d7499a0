"""Which bytes serve a file: the identity of a copy, shared by storage and the read path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FileKey = tuple[str, str]  # (cold store, relpath): a file as the catalog knows it


@dataclass(frozen=True)
class Backing:
    """Where the bytes of a file come from for new opens: a tier (or cold store) and a path."""

    tier: str
    path: Path
