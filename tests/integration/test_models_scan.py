"""Scanning real directories: DirectoryTreeView on a tree of ~10k files.

How fast that is belongs in a benchmark, not in an assertion: timings vary with the load.
What makes it fast is asserted instead: one listing per directory, one stat per file of a
unit and none for anything else.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from tierfs.namespace.models import DirectoryTreeView, EntryKind, ModelKind, scan_models

REV = "c" * 40


class CountingView(DirectoryTreeView):
    """A real directory's view that counts the calls that cost a system call."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed: Counter[str] = Counter()
        self.stated: Counter[str] = Counter()
        self.read: Counter[str] = Counter()

    def listdir(self, rel: str) -> list[tuple[str, EntryKind]]:
        self.listed[rel] += 1
        return super().listdir(rel)

    def stat(self, rel: str) -> tuple[EntryKind, int]:
        self.stated[rel] += 1
        return super().stat(rel)

    def read_text(self, rel: str, limit: int) -> str:
        self.read[rel] += 1
        return super().read_text(rel, limit)


def test_scan_of_ten_thousand_real_files_finds_every_model(tmp_path: Path) -> None:
    for i in range(50):
        repo = tmp_path / "hub" / f"models--org--m{i}"
        (repo / "blobs").mkdir(parents=True)
        (repo / "snapshots" / REV).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REV)
        for j in range(50):
            (repo / "blobs" / f"b{j}").write_bytes(b"x" * j)
            os.symlink(f"../../blobs/b{j}", repo / "snapshots" / REV / f"f{j}.safetensors")
        lone = tmp_path / "lone" / str(i)
        lone.mkdir(parents=True)
        for j in range(100):
            (lone / f"w{j}.gguf").write_bytes(b"g")
        hf = tmp_path / "hf" / f"m{i}"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text("{}")
        for j in range(48):
            (hf / f"model-{j}.safetensors").write_bytes(b"s")

    view = CountingView(tmp_path)
    result = scan_models(view)

    kinds = [m.kind for m in result.models]
    assert (kinds.count(ModelKind.HF_HUB), kinds.count(ModelKind.HF_DIR)) == (50, 50)
    assert kinds.count(ModelKind.FILE) == 5000
    assert result.problems == ()
    hub0 = next(m for m in result.models if m.name == f"org/m0@{REV[:12]}")
    assert hub0.size == sum(range(50)) and hub0.refs == ("main",)
    # root, hub, lone, hf; per repo itself, blobs, snapshots, the snapshot and refs;
    # one directory per lone group and per HF model.
    assert len(view.listed) == 3 + 1 + 50 * 5 + 50 + 50
    assert set(view.listed.values()) == {1}
    # Every hub blob, lone file, HF weight and config.json once; the symlinks never.
    assert len(view.stated) == 50 * 50 + 50 * 100 + 50 * 49
    assert set(view.stated.values()) == {1}
    assert not any(path.endswith(".safetensors") and "/snapshots/" in path for path in view.stated)
    # Each hub ref and each config.json is read once.
    assert len(view.read) == 50 + 50 and set(view.read.values()) == {1}
