"""The loader benchmark's report: the ratios the issue's targets are stated in come from the
right cells (the best peer, the least-CPU peer, the faster fresh-memory bound)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import loader_report as lr


def _sample(gbps: float, cpu_s: float) -> dict[str, Any]:
    return {"gbps": gbps, "user_s": cpu_s, "sys_s": 0.0, "peak_rss_kib": 2**20, "rss_before_kib": 0}


def _results(cells: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    runs = {f"tmpfs/{m}": {"samples": [_sample(*x) for x in xs]} for m, xs in cells.items()}
    results = {
        "machine": {"date": "D", "cpu": "C", "cores": "2", "mem_gib": "24", "kernel": "K"},
        "bytes": 4 * 10**9,
        "files": 2,
        "cold_dropped": True,
        "runs": runs,
    }
    lr.summarise(results)
    return results


def test_ratios_take_medians_best_peer_and_faster_bound() -> None:
    results = _results(
        {
            "loader": [(3.0, 1.0), (4.0, 2.0), (9.0, 3.0)],  # median 4.0 GB/s, 2.0 CPU s
            "runai": [(2.0, 6.0)],
            "fastsafetensors": [(1.0, 1.0)],
            "bound-copy-fresh": [(5.0, 1.0)],
        }
    )
    extra = {"tmpfs": ["bound-copy-fresh", "loader-views"]}
    lines = lr.report_lines(results, ["tmpfs"], ["loader", "runai", "fastsafetensors"], extra)
    assert "| loader | 4.00 (2.0 s; +1.00) |" in lines
    assert "| loader-views | - |" in lines
    assert lines[-1] == (
        "- tmpfs: loader / best peer (runai) 2.00x in GB/s; CPU seconds, least-CPU peer "
        "(fastsafetensors) / loader 0.50x; loader / bound-copy-fresh 0.80x"
    )
