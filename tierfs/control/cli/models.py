"""Commands that steer models: promote (with progress), demote, pin, unpin."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tierfs.control.cli.app import (
    ConfigOption,
    ModelArg,
    TierOption,
    app,
    config_at,
    connect,
    err,
    esc,
    out,
    user_errors,
)
from tierfs.states import JobState, ModelState
from tierfs.units import format_size


@app.command()
@user_errors
def promote(
    model: ModelArg,
    tier: TierOption = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait until it is hot.")] = False,
    config: ConfigOption = None,
) -> None:
    """Copy a model into a RAM tier."""
    cfg = config_at(config)
    with connect(cfg) as client:
        job = client.promote(model, tier)
        if not wait:
            out.print(f"promoting {esc(job['model'])} to {esc(job['tier'])} (job {job['id']})")
            return
        job = _follow(client, job)
        if job["state"] != JobState.DONE:
            from tierfs.errors import ControlError

            raise ControlError(f"promotion of {job['model']} {job['state']}: {job['error']}")
        final = next((m for m in client.status()["models"] if m["name"] == job["model"]), None)
        if final is None or final["state"] != ModelState.HOT:
            from tierfs.errors import ControlError

            state = final["state"] if final else "gone"
            raise ControlError(f"{job['model']} is {state} after its promotion")
        out.print(f"{esc(job['model'])} is hot on {esc(job['tier'])}")


def _follow(client: Any, job: dict[str, Any]) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(
            f"{esc(job['model'])} -> {esc(job['tier'])}", total=job["bytes_total"]
        )
        while JobState(job["state"]).active:
            time.sleep(0.2)
            job = client.job(job["id"])
            progress.update(task, completed=job["bytes_done"], total=job["bytes_total"])
    return job


@app.command()
@user_errors
def demote(model: ModelArg, config: ConfigOption = None) -> None:
    """Remove a model's hot copies; reads go back to cold storage."""
    cfg = config_at(config)
    with connect(cfg) as client:
        result = client.demote(model)
    out.print(f"demoted {esc(result['model'])}: {format_size(result['freed'])} freed")


@app.command()
@user_errors
def pin(model: ModelArg, tier: TierOption = None, config: ConfigOption = None) -> None:
    """Keep a model hot: promote it now and never evict it (survives restarts)."""
    cfg = config_at(config)
    with connect(cfg) as client:
        job = client.pin(model, tier)
    out.print(f"pinned {esc(job['model'])} (promoting to {esc(job['tier'])}, job {job['id']})")


@app.command()
@user_errors
def unpin(model: ModelArg, config: ConfigOption = None) -> None:
    """Let a pinned model be evicted again."""
    cfg = config_at(config)
    with connect(cfg) as client:
        result = client.unpin(model)
    word = "unpinned" if result["unpinned"] else "was not pinned:"
    out.print(f"{word} {esc(result['model'])}")
