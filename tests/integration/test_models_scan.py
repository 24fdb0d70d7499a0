"""Scanning real directories: DirectoryTreeView on a tree of ~10k files.

How fast that is belongs in a benchmark, not in an assertion: timings vary with the load.
"""

from __future__ import annotations

import os
from pathlib import Path

from tierfs.namespace.models import ModelKind, scan_directory

REV = "c" * 40


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

    result = scan_directory(tmp_path)

    kinds = [m.kind for m in result.models]
    assert (kinds.count(ModelKind.HF_HUB), kinds.count(ModelKind.HF_DIR)) == (50, 50)
    assert kinds.count(ModelKind.FILE) == 5000
    assert result.problems == ()
    hub0 = next(m for m in result.models if m.name == f"org/m0@{REV[:12]}")
    assert hub0.size == sum(range(50)) and hub0.refs == ("main",)
