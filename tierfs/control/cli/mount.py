"""Commands that start, stop and set up a mount: mount, unmount, demo, install."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tierfs import DEFAULT_CONFIG_PATH
from tierfs.errors import ConfigError
from tierfs.ops.logsetup import setup_logging

if TYPE_CHECKING:
    from tierfs.config import Config


from tierfs.control.cli.app import ConfigOption, app, config_at, err, esc, out, user_errors


@app.command()
@user_errors
def mount(
    config: ConfigOption = None,
    foreground: Annotated[
        bool,
        typer.Option("--foreground/--daemon", "-f/-d", help="Stay in the foreground, or detach."),
    ] = True,
) -> None:
    """Mount the namespace and serve it until SIGINT or SIGTERM."""
    cfg = config_at(config)
    if foreground:
        setup_logging(cfg.log_level)
        from tierfs.daemon.service import Daemon

        path = config or Path(os.environ.get("TIERFS_CONFIG", DEFAULT_CONFIG_PATH))
        Daemon(cfg, config_path=path.resolve()).run()
        return
    from tierfs.daemon.spawn import spawn_daemon

    config_path = (config or Path(os.environ.get("TIERFS_CONFIG", DEFAULT_CONFIG_PATH))).resolve()
    log_file = cfg.state_dir / "tierfs.log"
    pid = spawn_daemon(config_path, cfg.mountpoint, log_file)
    out.print(f"tierfs mounted at {esc(cfg.mountpoint)} (pid {pid}, log {esc(log_file)})")


@app.command()
@user_errors
def unmount(
    mountpoint: Annotated[Path | None, typer.Argument(help="Default: the config's.")] = None,
    config: ConfigOption = None,
) -> None:
    """Unmount a tierfs mount (the daemon then exits by itself)."""
    from tierfs.daemon.mounting import is_tierfs, lazy_unmount
    from tierfs.errors import MountError
    from tierfs.mountinfo import mount_entry

    target = (mountpoint or config_at(config).mountpoint).absolute()
    if not is_tierfs(mount_entry(target)):
        raise MountError(f"no tierfs is mounted at {target}", path=str(target))
    lazy_unmount(target)
    out.print(f"unmounted {esc(target)}")


@app.command()
@user_errors
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo's cold store and state live.")
    ] = Path("demo"),
    build_only: Annotated[
        bool, typer.Option("--build-only", help="Build the demo store, don't mount.")
    ] = False,
) -> None:
    """Build a small demo cold store and mount it with the built-in demo config."""
    from tierfs.config import to_toml
    from tierfs.ops.demo import build_demo_store
    from tierfs.ops.demo.config import demo_config

    directory = directory.absolute()
    setup_logging("info")
    store = build_demo_store(directory / "cold")
    cfg = demo_config(directory)
    config_file = directory / "tierfs.toml"
    config_file.write_text(to_toml(cfg))
    if build_only:
        out.print(f"demo store built in {esc(store.root)}; config written to {esc(config_file)}")
        return
    cfg.mountpoint.mkdir(parents=True, exist_ok=True)
    from tierfs.daemon.service import Daemon

    banner = functools.partial(_demo_banner, cfg, config_file, store.model_names)
    Daemon(cfg, on_ready=banner, config_path=config_file).run()


def _demo_banner(cfg: Config, config_file: Path, model_names: tuple[str, ...]) -> None:
    mnt = cfg.mountpoint
    try:
        rel = mnt.relative_to(Path.cwd())
    except ValueError:
        rel = mnt
    lines = [
        "",
        f"[bold green]tierfs demo is mounted at {esc(mnt)}[/bold green]",
        f"  cold store (read-only): {esc(cfg.cold[0].path)}",
        f"  state and catalog:      {esc(cfg.state_dir)}",
        f"  config:                 {esc(config_file)}",
        f"  models: {esc(', '.join(model_names))}",
        "",
        "Look around from another shell:",
        f"  ls -lR {esc(rel)}",
        f"  getfattr -d -m user.tierfs {esc(rel)}/gguf/tiny-llama.gguf",
        f"  readlink {esc(rel)}/hub/models--tierfs-demo--tiny-llama/snapshots/*/config.json",
        f"  .venv/bin/tierfs status --config {esc(config_file)}",
        f"  .venv/bin/tierfs gui --config {esc(config_file)}    (the web GUI)",
        "",
        "Press Ctrl-C to unmount.",
        "",
    ]
    for line in lines:
        err.print(line)


@app.command()
@user_errors
def install(
    cold: Annotated[
        list[str] | None,
        typer.Option("--cold", help="A cold store, PATH or NAME=PATH (repeat for more)."),
    ] = None,
    tier_size: Annotated[
        str | None, typer.Option("--tier-size", help="RAM tier size, e.g. 64G; 0 for none.")
    ] = None,
    tier_path: Annotated[Path, typer.Option("--tier-path", help="Where the RAM tier goes.")] = (
        Path("/mnt/tierfs/ram0")
    ),
    mountpoint: Annotated[
        Path | None, typer.Option("--mountpoint", help="Where the models appear.")
    ] = None,
    root: Annotated[
        Path, typer.Option("--root", help="Install into this directory instead of /.")
    ] = Path("/"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing config.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every file and command; change nothing.")
    ] = False,
) -> None:
    """Write /etc/tierfs/config.toml, install and enable the systemd unit, check the machine.

    Without --cold, and on a terminal, it asks for the cold stores, tier size and mountpoint.
    """
    from tierfs.ops import install as inst

    if not cold:
        if not sys.stdin.isatty():
            raise ConfigError(
                "give at least one --cold PATH (no terminal to ask on)", path="--cold"
            )
        cold = typer.prompt("Cold stores (paths, comma-separated)").split(",")
        tier_size = tier_size or typer.prompt("RAM tier size", default=inst.default_tier_size())
        mountpoint = mountpoint or Path(typer.prompt("Mountpoint", default="/models"))
    cfg = inst.build_config(
        [c.strip() for c in cold if c.strip()],
        tier_size=tier_size or inst.default_tier_size(),
        tier_path=tier_path,
        mountpoint=mountpoint or inst.DEFAULT_MOUNTPOINT,
    )
    plan = inst.plan_install(cfg, root=root.absolute(), force=force)
    verb = "would" if dry_run else "will"
    for directory in plan.dirs:
        out.print(f"{verb} create {directory}/", markup=False)
    for step in plan.files:
        out.print(f"{verb} write {step.path} (mode {step.mode:o}):", markup=False)
        out.print(step.content, end="", markup=False, soft_wrap=True)
    for command in plan.commands:
        out.print(f"{verb} run: {' '.join(command)}", markup=False)
    if not dry_run:
        inst.apply(plan)
    for note in plan.notes:
        out.print(f"note: {note}", markup=False)
    for check in inst.check_machine(cfg):
        mark = {True: "ok", False: "warning", None: "unknown"}[check.ok]
        out.print(f"check {check.name}: {mark}: {check.detail}", markup=False)
    if not dry_run:
        out.print(f"installed; the config is {plan.files[0].path}", markup=False)
