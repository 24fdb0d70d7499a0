"""The settings the GUI may change live: validated as the config is, saved with comments kept.

A change is checked by validating the whole config with it applied, through the same
pydantic models and error messages as ``tierfs config check``; then it is written into
the config file by tomlkit, which keeps the user's comments and layout, and only then
applied to the running daemon.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import Field
from tomlkit.items import Table

from tierfs.config import Config, config_from_dict
from tierfs.control.api import StrictBody
from tierfs.errors import ConfigError

# Each setting and where it lives in the config: (table, key).
PLACES: dict[str, tuple[str, str]] = {
    "strategy": ("placement", "strategy"),
    "high_watermark": ("policy", "high_watermark"),
    "low_watermark": ("policy", "low_watermark"),
    "promote_on_open": ("policy", "promote_on_open"),
}


class SettingsBody(StrictBody):
    """``POST /api/settings``: any subset of the settings; the config's models check values."""

    strategy: str | None = Field(default=None, max_length=64)
    high_watermark: float | None = None
    low_watermark: float | None = None
    promote_on_open: bool | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def current_settings(config: Config) -> dict[str, Any]:
    """The settings as the running daemon applies them."""
    dumped = config.model_dump(mode="json")
    return {name: dumped[table][key] for name, (table, key) in PLACES.items()}


def with_changes(config: Config, changes: dict[str, Any], source: str) -> Config:
    """`config` with `changes` applied, validated as a whole.

    Raises:
        ConfigError: naming the key (``policy.low_watermark``) and what is wrong.
    """
    data = config.model_dump(mode="python")
    for name, value in changes.items():
        table, key = PLACES[name]
        data[table] = {**data[table], key: value}
    return config_from_dict(data, source=source)


def save_changes(path: Path, changes: dict[str, Any]) -> None:
    """Write `changes` into the config file at `path`, keeping everything else as it was.

    The file is replaced atomically (temp file, fsync, rename) with its mode kept, so a
    crash leaves either the old file or the new one.

    Raises:
        ConfigError: the file cannot be read, parsed or written.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = os.stat(path).st_mode & 0o7777
        doc = tomlkit.parse(text)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(path)) from None
    for name, value in changes.items():
        table_name, key = PLACES[name]
        table = doc.get(table_name)
        if table is None:
            table = tomlkit.table()
            doc.add(table_name, table)
        elif not isinstance(table, Table | dict):
            raise ConfigError("is not a table", path=str(path), key=table_name)
        table[key] = value
    temp = path.with_name(f".{path.name}.tierfs-new")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tomlkit.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot save the settings: {exc.strerror}", path=str(path)) from None
