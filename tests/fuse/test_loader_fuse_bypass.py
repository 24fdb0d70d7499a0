"""The tierfs bypass on a real mount: bulk bytes must not pass through FUSE.

Needs the ``tierfs_mount`` fixture from tests/fuse/conftest.py (added on main by the lead).
The fixture is expected to yield an object with ``.root`` (mount point, a Path) and
``.write(relpath, bytes)`` placing a file in the mount; skipped until it exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import loader
from loader import tierfs
from tests.loader_testutil import digest

pytestmark = pytest.mark.fuse


@pytest.fixture
def mount(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("tierfs_mount")
    except pytest.FixtureLookupError:
        pytest.skip("tierfs_mount fixture not available yet (tests/fuse/conftest.py)")


def test_bulk_bytes_bypass_fuse(mount: Any, tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    ref = {f"w{i}": torch.randn(512, 1024) for i in range(8)}  # 16 MiB
    save_file(ref, str(src))
    mount.write("m.safetensors", src.read_bytes())
    path = Path(mount.root) / "m.safetensors"
    assert tierfs.getxattr(str(path), tierfs.XATTR_BACKING) is not None
    before = tierfs.mount_stats(str(mount.root))
    with loader.safe_open(path, verify=True) as f:
        assert f.files[0].rf.on_tierfs and f.files[0].rf.read_path != str(path)
        got = {k: digest(v) for k, v in f.tensors()}
    after = tierfs.mount_stats(str(mount.root))
    assert got == {k: digest(v) for k, v in ref.items()}
    # Header and data both come from the backing copy: the FUSE read counter stays flat.
    assert after["read_bytes"] - before["read_bytes"] < 64 * 1024
