"""What pyproject.toml ships must exist: a glob that matches nothing hides a lost file."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_data_glob_matches_a_file() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = project["tool"]["setuptools"]["package-data"]
    empty = [
        f"{package}/{pattern}"
        for package, patterns in package_data.items()
        for pattern in patterns
        if not any(p.is_file() for p in (REPO / package).glob(pattern))
    ]
    assert not empty, f"package-data globs that match no file: {empty}"
