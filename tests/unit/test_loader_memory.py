"""Which pages host memory gets: huge pages for reused staging buffers; for the fresh
destinations a load returns, huge pages only where the host does not reclaim free memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyfakefs.fake_filesystem_unittest import Patcher

from loader import memory
from loader.memory import HostBuffer
from tests.loader_testutil import write_raw

BALLOON = "/sys/bus/virtio/drivers/virtio_balloon/virtio0/features"


def _vmflags(addr: int) -> list[str]:
    """The VmFlags of the mapping holding ``addr`` (``hg``: huge pages advised)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.parametrize(
    ("features", "reclaims"),
    [
        # Bits 1, 2, 5 (stats, deflate on OOM, free page reporting), as on the CI VMs.
        ("0110010100000000000000000000000010000000", True),
        ("0110000100000000000000000000000010000000", False),
        (None, False),  # no balloon: bare metal or another hypervisor
    ],
)
def test_free_page_reporting_is_read_from_the_balloon(features: str | None, reclaims: bool) -> None:
    with Patcher() as p:
        assert p.fs is not None
        if features is not None:
            p.fs.create_file(BALLOON, contents=features + "\n")
        assert memory.host_reclaims_free_pages() is reclaims


@pytest.mark.parametrize("huge", [True, False])
def test_buffer_advises_huge_pages_only_when_asked(huge: bool) -> None:
    buf = HostBuffer(4 << 20, huge=huge)
    assert ("hg" in _vmflags(buf.addr)) is huge


_PROBE = """
import json, sys
from pathlib import Path
import loader
sys.path.insert(0, sys.argv[2])
from tests.unit.test_loader_memory import _vmflags
with loader.safe_open(sys.argv[1], backend="buffered") as f:
    t = dict(f.tensors())["big"]
print(json.dumps({"hg": "hg" in _vmflags(t.data_ptr()), "auto": loader.memory.HUGE_DESTINATIONS,
                  "reclaims": loader.memory.host_reclaims_free_pages()}))
"""


@pytest.mark.parametrize("env", ["0", "1", None])
def test_destinations_follow_the_host(tmp_path: Path, env: str | None) -> None:
    """A tensor the load returns sits in huge pages exactly when the policy says so."""
    p = tmp_path / "m.safetensors"
    write_raw(p, [("big", torch.arange(3 << 20, dtype=torch.int8).reshape(3, -1))])
    repo = str(Path(__file__).resolve().parents[2])
    environ = {"PYTHONPATH": repo}
    if env is not None:
        environ["LOADER_HUGE"] = env
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(p), repo],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    )
    got = json.loads(out.stdout)
    want = {"0": False, "1": True, None: not got["reclaims"]}[env]
    assert got["hg"] is want
    assert got["auto"] is want
