"""The ``tierfs`` command line.

User errors print one line and exit non-zero (2 for a bad config or usage), never a
traceback. Everything that decides anything lives in the modules below; this file only
parses arguments and renders results.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tierfs import DEFAULT_CONFIG_PATH, __version__
from tierfs.errors import ConfigError, TierfsError
from tierfs.logsetup import setup_logging
from tierfs.states import JobState, ModelState
from tierfs.units import format_size

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


def _e(value: object) -> str:
    """A name or path, shown as it is: rich markup in it is not markup."""
    return escape(str(value))


def _config(path: Path | None) -> Config:
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
    out.print(f"tierfs mounted at {_e(cfg.mountpoint)} (pid {pid}, log {_e(log_file)})")


@app.command()
@user_errors
def unmount(
    mountpoint: Annotated[Path | None, typer.Argument(help="Default: the config's.")] = None,
    config: ConfigOption = None,
) -> None:
    """Unmount a tierfs mount (the daemon then exits by itself)."""
    from tierfs.daemon import is_tierfs, lazy_unmount
    from tierfs.errors import MountError
    from tierfs.mountinfo import mount_entry

    target = (mountpoint or _config(config).mountpoint).absolute()
    if not is_tierfs(mount_entry(target)):
        raise MountError(f"no tierfs is mounted at {target}", path=str(target))
    lazy_unmount(target)
    out.print(f"unmounted {_e(target)}")


@app.command()
@user_errors
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show tiers, models and copies in flight (from the running mount, or the catalog)."""
    cfg = _config(config)
    setup_logging("error")
    from tierfs.client import ControlClient, daemon_running

    if daemon_running(cfg.control_socket):
        with ControlClient(cfg.control_socket) as client:
            report = client.status()
    else:
        from tierfs.status import offline_report

        report = offline_report(cfg)
    if as_json:
        # Plain text, not rich's highlighted JSON: that took a second for 1,000 models.
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    _print_report(report)


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(time.time() - ts, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()
) -> None:
    """Aligned plain columns, cells shown as they are.

    Plain text rather than rich's Table, which took half a second for 1,000 models.
    """
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if name in right else cell.ljust(width)
            for cell, width, name in zip(cells, widths, header, strict=True)
        )
        return "  ".join(padded).rstrip() + "\n"

    out.print(f"[italic]{title}[/italic]")
    out.print(line(header), style="bold", markup=False, end="")
    sys.stdout.write("".join(line(row) for row in rows))


def _print_report(data: dict[str, Any]) -> None:
    state = "[green]mounted[/green]" if data["running"] else "[yellow]not mounted[/yellow]"
    out.print(f"[bold]tierfs[/bold] {_e(data['mountpoint'])} ({state})")
    reads = data.get("reads")
    if reads:
        why = f", because {reads['read_mode_reason']}" if reads["read_mode_reason"] else ""
        out.print(
            f"read mode: {reads['read_mode']}{why}; opens: {reads['passthrough_opens']} "
            f"by passthrough, {reads['daemon_opens']} served by the daemon",
            highlight=False,
            markup=False,
        )
    _print_table(
        "Cold stores (read-only)",
        ("name", "path"),
        [(store["name"], store["path"]) for store in data["cold"]],
    )
    if data["tiers"]:
        _print_table(
            "Tiers",
            ("name", "kind", "rank", "size", "used", "free", "path"),
            [
                (
                    t["name"],
                    t["kind"],
                    str(t["rank"]),
                    format_size(t["size"]),
                    format_size(t["used"]),
                    format_size(t["free"]),
                    t["path"],
                )
                for t in data["tiers"]
            ],
            right=("size", "used", "free"),
        )
    _print_table(
        "Models",
        ("name", "kind", "size", "files", "state", "tier", "pinned", "last access"),
        [
            (
                m["name"],
                m["kind"],
                format_size(m["size"]),
                str(len(m["files"])),
                m["state"],
                ",".join(m["tiers"]),
                (m["pin_tier"] or "yes") if m["pinned"] else "",
                _ago(m["last_access"]),
            )
            for m in data["models"]
        ],
        right=("size", "files"),
    )
    if not data["models"]:
        out.print("  (no models found)")
    for m in data["models"]:
        if m.get("cold_reason"):
            out.print(f"  {m['name']} stays cold: {m['cold_reason']}", markup=False)
    active = [j for j in data["jobs"] if JobState(j["state"]).active]
    if active:
        out.print("[bold]Copies in flight[/bold]")
        for j in active:
            pct = 100 * j["bytes_done"] / j["bytes_total"] if j["bytes_total"] else 100.0
            out.print(
                f"  {_e(j['model'])} -> {_e(j['tier'])}: {pct:.0f}% of "
                f"{format_size(j['bytes_total'])}, {j['rate'] / 1e9:.2f} GB/s"
            )
    if data["conflicts"]:
        out.print("[bold]Name conflicts[/bold] (the first store wins)")
        for c in data["conflicts"]:
            out.print(
                f"  {c['relpath']}: served from {c['winner']}, also in {', '.join(c['losers'])}",
                markup=False,
            )
    if data["problems"]:
        out.print("[bold yellow]Problems[/bold yellow]")
        for p in data["problems"]:
            out.print(f"  {p['path']}: {p['message']}", markup=False)


def _client(cfg: Config) -> Any:
    from tierfs.client import ControlClient, daemon_running
    from tierfs.errors import ControlError

    if not daemon_running(cfg.control_socket):
        raise ControlError(
            f"tierfs is not mounted at {cfg.mountpoint} (no daemon on {cfg.control_socket})"
        )
    return ControlClient(cfg.control_socket)


ModelArg = Annotated[str, typer.Argument(help="A model name as `tierfs status` lists it.")]
TierOption = Annotated[str | None, typer.Option("--tier", "-t", help="Tier to use.")]


@app.command()
@user_errors
def promote(
    model: ModelArg,
    tier: TierOption = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait until it is hot.")] = False,
    config: ConfigOption = None,
) -> None:
    """Copy a model into a RAM tier."""
    cfg = _config(config)
    with _client(cfg) as client:
        job = client.promote(model, tier)
        if not wait:
            out.print(f"promoting {_e(job['model'])} to {_e(job['tier'])} (job {job['id']})")
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
        out.print(f"{_e(job['model'])} is hot on {_e(job['tier'])}")


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
            f"{_e(job['model'])} -> {_e(job['tier'])}", total=job["bytes_total"]
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
    cfg = _config(config)
    with _client(cfg) as client:
        result = client.demote(model)
    out.print(f"demoted {_e(result['model'])}: {format_size(result['freed'])} freed")


@app.command()
@user_errors
def pin(model: ModelArg, tier: TierOption = None, config: ConfigOption = None) -> None:
    """Keep a model hot: promote it now and never evict it (survives restarts)."""
    cfg = _config(config)
    with _client(cfg) as client:
        job = client.pin(model, tier)
    out.print(f"pinned {_e(job['model'])} (promoting to {_e(job['tier'])}, job {job['id']})")


@app.command()
@user_errors
def unpin(model: ModelArg, config: ConfigOption = None) -> None:
    """Let a pinned model be evicted again."""
    cfg = _config(config)
    with _client(cfg) as client:
        result = client.unpin(model)
    word = "unpinned" if result["unpinned"] else "was not pinned:"
    out.print(f"{word} {_e(result['model'])}")


@app.command()
@user_errors
def fsck(
    deep: Annotated[bool, typer.Option("--deep", help="Re-hash every hot copy.")] = False,
    config: ConfigOption = None,
) -> None:
    """Check the catalog against the tiers and repair it."""
    cfg = _config(config)
    setup_logging("error")
    from tierfs.client import ControlClient, daemon_running

    if daemon_running(cfg.control_socket):
        with ControlClient(cfg.control_socket, timeout=3600) as client:
            report = client.fsck(deep)
    else:
        from tierfs.catalog import Catalog
        from tierfs.fsck import check
        from tierfs.statedir import StateDir
        from tierfs.tiers import prepare_tiers, release_fresh_tiers

        # Held throughout, so that no daemon starts on the catalog while it is repaired.
        with StateDir(cfg.state_dir, "tierfs fsck"):
            tiers = prepare_tiers(cfg.tier)
            try:
                with Catalog(cfg.catalog_path) as catalog:
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
    cfg = _config(config)
    out.print(
        f"config OK: {len(cfg.cold)} cold store(s), {len(cfg.tier)} tier(s), "
        f"mountpoint {_e(cfg.mountpoint)}"
    )


@config_app.command("show")
@user_errors
def config_show(config: ConfigOption = None) -> None:
    """Print the effective config, defaults included, as TOML."""
    from tierfs.config import to_toml

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
    from tierfs.config import demo_config, to_toml
    from tierfs.demo import build_demo_store

    directory = directory.absolute()
    setup_logging("info")
    store = build_demo_store(directory / "cold")
    cfg = demo_config(directory)
    config_file = directory / "tierfs.toml"
    config_file.write_text(to_toml(cfg))
    if build_only:
        out.print(f"demo store built in {_e(store.root)}; config written to {_e(config_file)}")
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
        f"[bold green]tierfs demo is mounted at {_e(mnt)}[/bold green]",
        f"  cold store (read-only): {_e(cfg.cold[0].path)}",
        f"  state and catalog:      {_e(cfg.state_dir)}",
        f"  config:                 {_e(config_file)}",
        f"  models: {_e(', '.join(model_names))}",
        "",
        "Look around from another shell:",
        f"  ls -lR {_e(rel)}",
        f"  getfattr -d -m user.tierfs {_e(rel)}/gguf/tiny-llama.gguf",
        f"  readlink {_e(rel)}/hub/models--tierfs-demo--tiny-llama/snapshots/*/config.json",
        f"  .venv/bin/tierfs status --config {_e(config_file)}",
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
    from tierfs import install as inst

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


def main() -> None:
    app()
