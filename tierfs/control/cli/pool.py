"""Commands for pools: list, connect, disconnect and resize, following each step."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tierfs.control.cli.app import ConfigOption, app, config_at, connect, err, esc, out, user_errors
from tierfs.states import OperationState, StepState
from tierfs.units import format_size

pool_app = typer.Typer(help="List pools; connect, disconnect or resize one.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")

PoolArg = Annotated[str, typer.Argument(help="A pool (tier) name as `tierfs pool list` shows it.")]
POLL_S = 0.2


@pool_app.command("list")
@user_errors
def pool_list(config: ConfigOption = None) -> None:
    """Every pool with its kind, size, use and state."""
    cfg = config_at(config)
    with connect(cfg) as client:
        pools = client.pools()
    out.print(f"{'POOL':<16} {'KIND':<7} {'STATE':<14} {'SIZE':>9} {'USED':>9} {'FREE':>9}  PATH")
    for p in pools:
        out.print(
            f"{esc(p['name']):<16} {p['kind']:<7} {p['state']:<14} {format_size(p['size']):>9} "
            f"{format_size(p['used']):>9} {format_size(p['free']):>9}  {esc(p['path'])}"
        )
        if p["error"]:
            out.print(f"  last error: {esc(p['error'])}")


@pool_app.command("connect")
@user_errors
def pool_connect(name: PoolArg, config: ConfigOption = None) -> None:
    """Bring a pool up: mount its tmpfs, or attach and mount a remote RAM disk."""
    _run(config, name, "connect")


@pool_app.command("disconnect")
@user_errors
def pool_disconnect(name: PoolArg, config: ConfigOption = None) -> None:
    """Demote everything on a pool, then unmount it (and tear a remote one down)."""
    _run(config, name, "disconnect")


@pool_app.command("resize")
@user_errors
def pool_resize(
    name: PoolArg,
    size: Annotated[str, typer.Argument(help="The new size, like 8G (binary units).")],
    config: ConfigOption = None,
) -> None:
    """Resize a local pool; shrinking first demotes least recently used unpinned models."""
    _run(config, name, "resize", size)


def _run(config: Any, name: str, action: str, size: str | None = None) -> None:
    from tierfs.errors import ControlError

    cfg = config_at(config)
    with connect(cfg) as client:
        op = _follow(client, client.pool_action(name, action, size))
    if op["state"] != OperationState.DONE:
        raise ControlError(f"pool {op['pool']}: {action} failed: {op['error']}")
    pool = next((p for p in client.pools() if p["name"] == op["pool"]), None)
    state = pool["state"] if pool else "gone"
    out.print(f"pool {esc(op['pool'])}: {action} done; {state}")


def _follow(client: Any, op: dict[str, Any]) -> dict[str, Any]:
    """Print each step as it starts and ends, until the operation ends."""
    shown: dict[str, str] = {}
    while True:
        for step in op["steps"]:
            state = step["state"]
            if shown.get(step["name"]) == state or state == StepState.PENDING:
                continue
            shown[step["name"]] = state
            detail = f": {esc(step['detail'])}" if step["detail"] else ""
            err.print(f"  {esc(step['name'])} {state}{detail}", soft_wrap=True)
        if op["state"] != OperationState.RUNNING:
            return op
        time.sleep(POLL_S)
        op = client.pool_operation(op["id"])
