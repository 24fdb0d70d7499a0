"""The ``tierfs`` command line.

User errors print one line and exit non-zero (2 for a bad config or usage), never a
traceback. Everything that decides anything lives in the modules below; this file only
parses arguments and renders results.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tierfs import __version__
from tierfs.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    demo_config,
    format_size,
    load_config,
    to_toml,
)
from tierfs.errors import ConfigError, TierfsError
from tierfs.logsetup import setup_logging

log = logging.getLogger(__name__)

app = typer.Typer(
    name="tierfs",
    help="A tiered FUSE filesystem for LLM model weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check or show the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Config file [default: $TIERFS_CONFIG or {DEFAULT_CONFIG_PATH}]",
        dir_okay=False,
    ),
]


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn tierfs errors into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            # Plain echo, not rich: an error must stay one line whatever the width.
            typer.echo(f"tierfs: {exc}", err=True)
            raise typer.Exit(2) from None
        except TierfsError as exc:
            typer.echo(f"tierfs: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def _config(path: Path | None) -> Config:
    return load_config(path)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"tierfs {__version__}")
        raise typer.Exit(0)


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
    cfg = _config(config)
    if foreground:
        setup_logging(cfg.log_level)
        from tierfs.daemon import Daemon

        Daemon(cfg).run()
        return
    from tierfs.daemon import spawn_daemon

    config_path = (config or Path(os.environ.get("TIERFS_CONFIG", DEFAULT_CONFIG_PATH))).resolve()
    log_file = cfg.state_dir / "tierfs.log"
    pid = spawn_daemon(config_path, cfg, log_file)
    out.print(f"tierfs mounted at {cfg.mountpoint} (pid {pid}, log {log_file})")


@app.command()
@user_errors
def unmount(
    mountpoint: Annotated[Path | None, typer.Argument(help="Default: the config's.")] = None,
    config: ConfigOption = None,
) -> None:
    """Unmount a tierfs mount (the daemon then exits by itself)."""
    from tierfs.daemon import is_tierfs, lazy_unmount, mount_entry
    from tierfs.errors import MountError

    target = (mountpoint or _config(config).mountpoint).absolute()
    if not is_tierfs(mount_entry(target)):
        raise MountError(f"no tierfs is mounted at {target}", path=str(target))
    lazy_unmount(target)
    out.print(f"unmounted {target}")


@app.command()
@user_errors
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the models in the namespace, name conflicts and malformed units."""
    from tierfs.inventory import namespace_for, take_inventory

    cfg = _config(config)
    setup_logging("error")
    inventory = take_inventory(namespace_for(cfg))
    if as_json:
        out.print_json(json.dumps(inventory.to_json()))
        return
    _print_inventory(cfg, inventory.to_json())


def _print_inventory(cfg: Config, data: dict[str, Any]) -> None:
    out.print(f"[bold]tierfs[/bold] {cfg.mountpoint}")
    stores = Table(title="Cold stores", title_justify="left", box=None)
    for column in ("name", "path"):
        stores.add_column(column)
    for store in cfg.cold:
        stores.add_row(store.name, str(store.path))
    out.print(stores)
    models = Table(title="Models", title_justify="left", box=None)
    for column in ("name", "kind", "size", "files"):
        models.add_column(column, justify="right" if column in ("size", "files") else "left")
    for m in data["models"]:
        models.add_row(m["name"], m["kind"], format_size(m["size"]), str(len(m["files"])))
    out.print(models)
    if not data["models"]:
        out.print("  (no models found)")
    if data["conflicts"]:
        out.print("[bold]Name conflicts[/bold] (the first store wins)")
        for c in data["conflicts"]:
            out.print(
                f"  {c['relpath']}: served from {c['winner']}, also in {', '.join(c['losers'])}"
            )
    if data["problems"]:
        out.print("[bold yellow]Problems[/bold yellow]")
        for p in data["problems"]:
            out.print(f"  {p['path']}: {p['message']}", markup=False)


@config_app.command("check")
@user_errors
def config_check(config: ConfigOption = None) -> None:
    """Validate the config; exit 2 with one line naming the problem."""
    cfg = _config(config)
    out.print(
        f"config OK: {len(cfg.cold)} cold store(s), {len(cfg.tier)} tier(s), "
        f"mountpoint {cfg.mountpoint}"
    )


@config_app.command("show")
@user_errors
def config_show(config: ConfigOption = None) -> None:
    """Print the effective config, defaults included, as TOML."""
    out.print(to_toml(_config(config)), end="", markup=False)


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
    from tierfs.demo import build_demo_store

    directory = directory.absolute()
    setup_logging("info")
    store = build_demo_store(directory / "cold")
    cfg = demo_config(directory)
    config_file = directory / "tierfs.toml"
    config_file.write_text(to_toml(cfg))
    if build_only:
        out.print(f"demo store built in {store.root}; config written to {config_file}")
        return
    cfg.mountpoint.mkdir(parents=True, exist_ok=True)
    from tierfs.daemon import Daemon

    Daemon(cfg, on_ready=functools.partial(_demo_banner, cfg, config_file, store.model_names)).run()


def _demo_banner(cfg: Config, config_file: Path, model_names: tuple[str, ...]) -> None:
    mnt = cfg.mountpoint
    try:
        rel = mnt.relative_to(Path.cwd())
    except ValueError:
        rel = mnt
    lines = [
        "",
        f"[bold green]tierfs demo is mounted at {mnt}[/bold green]",
        f"  cold store (read-only): {cfg.cold[0].path}",
        f"  state and catalog:      {cfg.state_dir}",
        f"  config:                 {config_file}",
        f"  models: {', '.join(model_names)}",
        "",
        "Look around from another shell:",
        f"  ls -lR {rel}",
        f"  getfattr -d -m user.tierfs {rel}/gguf/tiny-llama.gguf",
        f"  readlink {rel}/hub/models--tierfs-demo--tiny-llama/snapshots/*/config.json",
        f"  .venv/bin/tierfs status --config {config_file}",
        "",
        "Press Ctrl-C to unmount.",
        "",
    ]
    for line in lines:
        err.print(line)


def main() -> None:
    app()
