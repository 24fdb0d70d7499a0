"""``tierfs status``: the report of tiers, models and copies in flight, as tables or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from tierfs.control.cli.app import ConfigOption, app, config_at, esc, out, user_errors
from tierfs.ops.logsetup import setup_logging
from tierfs.states import JobState
from tierfs.units import format_size


@app.command()
@user_errors
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show tiers, models and copies in flight (from the running mount, or the catalog)."""
    cfg = config_at(config)
    setup_logging("error")
    from tierfs.control.client import ControlClient, daemon_running

    if daemon_running(cfg.control_socket):
        with ControlClient(cfg.control_socket) as client:
            report = client.status()
    else:
        from tierfs.control.status import offline_report

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
    out.print(f"[bold]tierfs[/bold] {esc(data['mountpoint'])} ({state})")
    reads = data.get("reads")
    if reads:
        why = f", because {reads['read_mode_reason']}" if reads["read_mode_reason"] else ""
        out.print(
            f"read mode: {reads['read_mode']}{why}; opens: {reads['passthrough_opens']} "
            f"by passthrough, {reads['daemon_opens']} served by the daemon",
            highlight=False,
            markup=False,
        )
    out.print(f"placement strategy: {data['strategy']}", highlight=False, markup=False)
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
                f"  {esc(j['model'])} -> {esc(j['tier'])}: {pct:.0f}% of "
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
