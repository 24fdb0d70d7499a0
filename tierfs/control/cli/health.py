"""Commands that check: fsck, and config check/show."""

from __future__ import annotations

from typing import Annotated

import typer

from tierfs.control.cli.app import ConfigOption, app, config_app, config_at, esc, out, user_errors
from tierfs.ops.logsetup import setup_logging
from tierfs.units import format_size


@app.command()
@user_errors
def fsck(
    deep: Annotated[bool, typer.Option("--deep", help="Re-hash every hot copy.")] = False,
    config: ConfigOption = None,
) -> None:
    """Check the catalog against the tiers and repair it."""
    cfg = config_at(config)
    setup_logging("error")
    from tierfs.control.client import ControlClient, daemon_running

    if daemon_running(cfg.control_socket):
        with ControlClient(cfg.control_socket, timeout=3600) as client:
            report = client.fsck(deep)
    else:
        from tierfs.daemon.statedir import StateDir
        from tierfs.ops.fsck import check
        from tierfs.storage.catalog import Catalog
        from tierfs.storage.pools import prepare_pools
        from tierfs.storage.tiers import release_fresh_tiers

        # Held throughout, so that no daemon starts on the catalog while it is repaired.
        with StateDir(cfg.state_dir, "tierfs fsck"), Catalog(cfg.catalog_path) as catalog:
            # Disconnected pools stay down; what the catalog says is on them is gone.
            tiers = prepare_pools(catalog, cfg.tier)
            try:
                stores = {c.name: c.path for c in cfg.cold}
                report = check(catalog, tiers, stores, deep=deep).to_json()
            finally:
                # An offline check leaves the machine as it found it: a tier tmpfs it had
                # to mount (after a reboot, say) is empty, and the next mount makes its own.
                release_fresh_tiers(tiers)
    for finding in report["findings"]:
        out.print(f"{finding['path']}: {finding['problem']} ({finding['action']})", markup=False)
    hashed = f", {format_size(report['bytes_hashed'])} re-hashed" if deep else ""
    verdict = "clean" if report["clean"] else f"{len(report['findings'])} problem(s) found"
    out.print(f"fsck: {verdict}; {report['replicas_checked']} hot copies checked{hashed}")


@config_app.command("check")
@user_errors
def config_check(config: ConfigOption = None) -> None:
    """Validate the config; exit 2 with one line naming the problem."""
    cfg = config_at(config)
    out.print(
        f"config OK: {len(cfg.cold)} cold store(s), {len(cfg.tier)} tier(s), "
        f"mountpoint {esc(cfg.mountpoint)}"
    )


@config_app.command("show")
@user_errors
def config_show(config: ConfigOption = None) -> None:
    """Print the effective config, defaults included, as TOML."""
    from tierfs.config import to_toml

    out.print(to_toml(config_at(config)), end="", markup=False)
