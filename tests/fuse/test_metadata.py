"""Metadata through the mount: what ls -l asks for per file must not cost a round trip
per file. (The timings are in scripts/bench_metadata.py and docs/benchmarks.md.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.fuse.mounting import MountFactory

pytestmark = pytest.mark.timeout(60)


def test_security_and_acl_xattrs_are_unsupported_not_absent(
    mount_factory: MountFactory, cold_store: Path
) -> None:
    # ENOTSUP makes ls, cp and tar stop asking after the first file of the mount;
    # ENODATA made them ask for every file (two round trips per entry of ls -l).
    (cold_store / "m").mkdir()
    (cold_store / "m" / "a.gguf").write_bytes(b"x" * 4096)
    mount = mount_factory([("cold", cold_store)])
    path = mount.mountpoint / "m" / "a.gguf"
    for name in ("security.selinux", "system.posix_acl_access", "trusted.x"):
        for target in (path, path.parent):
            with pytest.raises(OSError) as caught:
                os.getxattr(target, name, follow_symlinks=False)
            assert caught.value.errno == errno.EOPNOTSUPP, (name, target, caught.value)
    # tierfs's own names still answer, and a user.* name it lacks is merely absent.
    assert os.getxattr(path, "user.tierfs.tier") == b"cold"
    with pytest.raises(OSError) as caught:
        os.getxattr(path, "user.other")
    assert caught.value.errno == errno.ENODATA
