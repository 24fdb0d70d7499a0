"""``python -m loader inspect`` and ``bench`` on real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from loader.__main__ import main


def _file(tmp_path: Path) -> Path:
    p = tmp_path / "c.safetensors"
    save_file(
        {"w": torch.zeros(16, 8, dtype=torch.bfloat16), "n": torch.ones(3)},
        str(p),
        metadata={"origin": "test"},
    )
    return p


def test_inspect_json(tmp_path: Path, capsys: object) -> None:
    p = _file(tmp_path)
    assert main(["inspect", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    names = {t["name"]: t for t in out["tensors"]}
    assert names["w"]["dtype"] == "BF16" and names["w"]["shape"] == [16, 8]
    b, e = names["w"]["offsets"]
    assert e - b == 256
    assert out["metadata"] == {"origin": "test"}


def test_inspect_table_and_bad_file(tmp_path: Path) -> None:
    p = _file(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "loader", "inspect", str(p)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "BF16" in r.stdout and "origin" in r.stdout
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    r = subprocess.run(
        [sys.executable, "-m", "loader", "inspect", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "bad.safetensors" in r.stdout


def test_bench_runs_every_backend(tmp_path: Path) -> None:
    p = _file(tmp_path)
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "loader", "bench", str(p)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    for name in ("auto", "direct", "buffered", "mmap", "gds"):
        assert name in r.stdout
    assert "not CUDA" in r.stdout  # gds says why it cannot run on CPU


def test_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    """A loader setting that is not usable is tierfs's ConfigError: exit 2, one line naming
    the setting and its value, no traceback."""
    p = _file(tmp_path)
    env = {**os.environ, "LOADER_THREADS": "lots", "COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "loader", "bench", str(p)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "LOADER_THREADS" in lines[0] and "'lots'" in lines[0], lines
    assert "Traceback" not in r.stderr
