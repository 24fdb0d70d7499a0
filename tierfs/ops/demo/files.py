"""Writing the demo's files: each through a temporary file and a rename, all recorded."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class Writer:
    """Writes files under a root and remembers every path it created."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: set[str] = set()

    def write(self, rel: str, data: bytes) -> Path:
        """Write ``data`` at ``rel`` atomically."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.created.add(rel)
        return path

    def symlink(self, rel: str, target: str) -> None:
        """Make ``rel`` a symlink to ``target``, replacing what is there."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        os.symlink(target, path)
        self.created.add(rel)
