"""The Typer app, its shared options, and how a user error becomes one line and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tierfs import DEFAULT_CONFIG_PATH, __version__
from tierfs.errors import ConfigError, TierfsError

if TYPE_CHECKING:
    from tierfs.config import Config


app = typer.Typer(
    name="tierfs",
    help="A tiered FUSE filesystem for LLM model weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check or show the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Piped output is read by scripts and people alike: never cut model names to fit 80 columns.
# Names come from file systems and users: no emoji codes, and markup only in our own
# text (every name goes through `_e`).
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Config file [default: $TIERFS_CONFIG or {DEFAULT_CONFIG_PATH}]",
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


def esc(value: object) -> str:
    """A name or path, shown as it is: rich markup in it is not markup."""
    return escape(str(value))


def config_at(path: Path | None) -> Config:
    # Imported here: pydantic is a large part of the start-up, and --version needs none of it.
    from tierfs.config import load_config

    return load_config(path)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"tierfs {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """A tiered FUSE filesystem for LLM model weights."""


def connect(cfg: Config) -> Any:
    from tierfs.control.client import ControlClient, daemon_running
    from tierfs.errors import ControlError

    if not daemon_running(cfg.control_socket):
        raise ControlError(
            f"tierfs is not mounted at {cfg.mountpoint} (no daemon on {cfg.control_socket})"
        )
    return ControlClient(cfg.control_socket)


ModelArg = Annotated[str, typer.Argument(help="A model name as `tierfs status` lists it.")]
TierOption = Annotated[str | None, typer.Option("--tier", "-t", help="Tier to use.")]
