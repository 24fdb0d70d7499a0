"""The Prometheus table of a running daemon, and its hand-over to prometheus_client.

One owner for the metric names, their help and their labels. The table is gathered by an
async call before a scrape (`tierfs.control.service`), because some values come from the
catalog, which is never read on the trio thread, and prometheus_client collects
synchronously.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tierfs.fuse.passthrough import ReadMode
from tierfs.fuse.readpath import ReadStats
from tierfs.storage.tiers import Tier

Labels = dict[str, str]
#: name -> (kind: "counter" or "gauge", help, samples as (labels, value)).
MetricsTable = dict[str, tuple[str, str, list[tuple[Labels, float]]]]


def metrics_table(
    s: ReadStats,
    read_mode: ReadMode,
    tiers: Sequence[Tier],
    usage: Mapping[str, int],
    *,
    copies_active: int,
) -> MetricsTable:
    """The daemon's metrics of one scrape.

    Args:
        s: the read path's counters.
        read_mode: who serves reads on this mount.
        tiers: the tiers, for their capacity.
        usage: bytes claimed on each tier, from the catalog.
        copies_active: promotions in flight.
    """
    return {
        "tierfs_read_bytes_total": (
            "counter",
            "Bytes served by FUSE reads",
            [({}, s.read_bytes)],
        ),
        "tierfs_read_requests_total": (
            "counter",
            "FUSE read requests",
            [({}, s.read_requests)],
        ),
        "tierfs_prefetch_bytes_total": (
            "counter",
            "Bytes pushed into the page cache",
            [({}, s.pushed_bytes)],
        ),
        "tierfs_opens_total": ("counter", "Files opened", [({}, s.opens)]),
        "tierfs_opens_by_mode_total": (
            "counter",
            "Files opened, by who serves their reads: the kernel (passthrough) or the daemon",
            [
                ({"mode": "passthrough"}, s.passthrough_opens),
                ({"mode": "daemon"}, s.daemon_opens),
            ],
        ),
        "tierfs_read_mode": (
            "gauge",
            "1 for the read mode of the mount (passthrough or daemon)",
            [({"mode": m.value}, int(read_mode is m)) for m in ReadMode],
        ),
        "tierfs_tier_capacity_bytes": (
            "gauge",
            "Tier capacity",
            [({"tier": t.name}, t.capacity) for t in tiers] or [({"tier": ""}, 0)],
        ),
        "tierfs_tier_used_bytes": (
            "gauge",
            "Bytes claimed on a tier",
            [({"tier": t.name}, usage.get(t.name, 0)) for t in tiers] or [({"tier": ""}, 0)],
        ),
        "tierfs_copies_active": (
            "gauge",
            "Promotions in flight",
            [({}, copies_active)],
        ),
    }


class MetricsSnapshot:
    """A `MetricsTable` as a prometheus_client collector (for a per-scrape registry)."""

    def __init__(self, table: MetricsTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Any]:
        """The table's families, as prometheus_client asks for them."""
        for name, (kind, help_text, samples) in self.table.items():
            family: Any
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=list(samples[0][0]))
            else:
                family = GaugeMetricFamily(name, help_text, labels=list(samples[0][0]))
            for labels, value in samples:
                family.add_metric(list(labels.values()), value)
            yield family
