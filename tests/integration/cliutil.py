"""Helpers of the CLI tests: the CLI in a subprocess, and config snippets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tierfs_cli(*args: str, columns: int | None = 500) -> subprocess.CompletedProcess[str]:
    """Run this worktree's CLI. `columns`: the terminal width to claim; None claims none,
    as when output goes to a pipe, a file or the journal."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "tierfs", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


def toml_str(value: object) -> str:
    """`value` as a TOML string."""
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string here


def cold_fixture(tmp_path: Path) -> Path:
    """An empty cold store directory."""
    root = tmp_path / "cold"
    root.mkdir()
    return root


def base_config(tmp_path: Path, cold: Path) -> str:
    """The top-level keys of a config whose mount and state live in `tmp_path`."""
    return (
        f"mountpoint = {toml_str(tmp_path / 'mnt')}\nstate_dir = {toml_str(tmp_path / 'state')}\n"
    )


def cold_table(cold: Path, name: str = "main") -> str:
    """A [[cold]] table."""
    return f"[[cold]]\nname = {toml_str(name)}\npath = {toml_str(cold)}\n"


cold = pytest.fixture(cold_fixture, name="cold")
