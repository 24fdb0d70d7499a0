"""The demo's built-in config: everything under one directory, one 1 GiB RAM tier."""

from __future__ import annotations

from pathlib import Path

from tierfs.config import Config, config_from_dict


def demo_config(base: Path) -> Config:
    """The built-in config of the demo: everything lives under `base`.

    Args:
        base: the demo directory, holding ``cold/`` (built by `tierfs.ops.demo`).
    """
    base = base.resolve()
    return config_from_dict(
        {
            "mountpoint": str(base.parent / "mnt") if base.name == "demo" else str(base / "mnt"),
            "state_dir": str(base / "state"),
            "cold": [{"name": "demo", "path": str(base / "cold")}],
            "tier": [{"name": "ram0", "path": str(base / "ram0"), "size": "1G", "rank": 0}],
        },
        source="<built-in demo config>",
    )
