"""The loader benchmark's report: medians per cell, the markdown table and the ratios the
issue's targets are stated in (scripts/bench_loader.py runs the measurements)."""

from __future__ import annotations

import statistics
from typing import Any


def summarise(results: dict[str, Any]) -> None:
    """Medians per cell, and each method's worst peak RSS added by the load."""
    for entry in results["runs"].values():
        s = entry.get("samples")
        if s:
            entry["median_gbps"] = statistics.median(x["gbps"] for x in s)
            entry["median_cpu_s"] = statistics.median(x["user_s"] + x["sys_s"] for x in s)
            entry["peak_added_gib"] = max(
                (x["peak_rss_kib"] - x["rss_before_kib"]) / 2**20 for x in s
            )


def report_lines(
    results: dict[str, Any], scenarios: list[str], peers: list[str], extra: dict[str, list[str]]
) -> list[str]:
    """The run as markdown: a caption, one row per method, then the ratios per scenario."""
    m = results["machine"]
    where = f"into {m['gpu']}" if "gpu" in m else "into CPU memory"
    out = [
        f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, "
        f"Linux {m['kernel']}; {results['bytes'] / 1e9:.2f} GB in {results['files']} files, "
        f"{where}; cells: median GB/s (median CPU seconds, user + system; worst peak RSS "
        "added, GiB)"
        + ("" if results["cold_dropped"] else "  (page cache NOT dropped: cold is not cold)"),
        "",
    ]
    rows = peers + [x for s in scenarios for x in extra[s] if x not in peers]
    rows = list(dict.fromkeys(rows))
    out.append("| method | " + " | ".join(scenarios) + " |")
    out.append("|---|" + "---:|" * len(scenarios))
    for meth in rows:
        cells = []
        for scen in scenarios:
            e = results["runs"].get(f"{scen}/{meth}", {})
            if "median_gbps" in e:
                cells.append(
                    f"{e['median_gbps']:.2f} ({e['median_cpu_s']:.1f} s; "
                    f"+{e['peak_added_gib']:.2f})"
                )
            else:
                cells.append("error" if e.get("errors") else "-")
        out.append(f"| {meth} | " + " | ".join(cells) + " |")
    out.append("")
    out += [f"- {line}" for line in ratios(results, scenarios, peers, extra)]
    return out


def ratios(
    results: dict[str, Any], scenarios: list[str], peers: list[str], extra: dict[str, list[str]]
) -> list[str]:
    """The loader against the best peer and against the fresh-memory bound, per scenario,
    in GB/s and in CPU seconds (the steadier figure on a shared machine)."""
    out = []
    for scen in scenarios:
        cell = {m: results["runs"].get(f"{scen}/{m}", {}) for m in [*peers, *extra[scen]]}
        mine = cell.get("loader", {})
        others = [(m, e) for m, e in cell.items() if m in peers and m != "loader"]
        others = [(m, e) for m, e in others if "median_gbps" in e]
        if "median_gbps" not in mine or not others:
            continue
        best, e = max(others, key=lambda x: x[1]["median_gbps"])
        thrift, c = min(others, key=lambda x: x[1]["median_cpu_s"])
        line = (
            f"{scen}: loader / best peer ({best}) {mine['median_gbps'] / e['median_gbps']:.2f}x "
            f"in GB/s; CPU seconds, least-CPU peer ({thrift}) / loader "
            f"{c['median_cpu_s'] / mine['median_cpu_s']:.2f}x"
        )
        # Into CPU memory the bound is the faster fresh-memory bound; into GPU memory it is
        # the slower of the storage and the link, a pipeline being as fast as its worst stage.
        cuda = "gpu" in results["machine"]
        names = (
            ["bound-io-only", "bound-h2d"]
            if cuda
            else [m for m in extra[scen] if m.endswith("-fresh")]
        )
        bounds = [(m, cell[m]) for m in names if "median_gbps" in cell.get(m, {})]
        if bounds:
            pick = min if cuda else max
            bm, b = pick(bounds, key=lambda x: x[1]["median_gbps"])
            line += f"; loader / {bm} {mine['median_gbps'] / b['median_gbps']:.2f}x"
        out.append(line)
    return out
