"""The remote-pool sequence, run for real as far as this kernel allows.

Real: ssh to a test host (sshd in a network namespace), the RAM disk it makes there (a
file behind a loop device), the nvmet configfs writes (into a directory standing in for
configfs, over that ssh), ext4 and the mount on that loop device, a promotion onto it,
demotion, unmount, teardown, and the rollback of an operation cut short.

Recorded, not run: the ``nvme`` commands, since this kernel has no NVMe-oF host. The
runner that records them makes the namespace appear as the kernel would, in a stand-in
sysfs tree whose namespace entry leads to the loop device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import xxhash

from tests.integration.sshhost import SshHost, ssh_host
from tests.integration.stack import Stack, running_stack
from tierfs.config import Config, config_from_dict
from tierfs.errors import PoolError
from tierfs.states import OperationState, PoolState, StepState
from tierfs.storage.catalog import Catalog
from tierfs.storage.pools import PoolManager, prepare_pools
from tierfs.storage.pools.commands import Result, run_command
from tierfs.storage.pools.remote import (
    RemoteTarget,
    export_script,
    find_namespace,
    unexport_script,
)
from tierfs.storage.tiers import Tier

MiB = 1 << 20
POOL = "remote0"
NQN = f"nqn.2014-08.io.tierfs:{POOL}"
MODEL = "m/w.safetensors"

pytestmark = pytest.mark.timeout(180)


@dataclass
class StandIn:
    """Runs every command for real except ``nvme``, which it records and imitates."""

    sysfs: Path
    devdir: Path
    image: Path
    nvme: list[list[str]] = field(default_factory=list)
    fail_on: str | None = None

    def __call__(self, argv: list[str], *, check: bool = True) -> Result:
        if argv[0] != "nvme":
            return run_command(argv, check=check)
        self.nvme.append(argv)
        if self.fail_on == argv[1]:
            raise PoolError(f"nvme {argv[1]}: simulated failure")
        subsystem = self.sysfs / "class" / "nvme-subsystem" / "nvme-subsys0"
        if argv[1] == "connect":
            loop = run_command(["losetup", "-j", str(self.image)]).stdout.split(":")[0]
            (subsystem / "nvme0n1").mkdir(parents=True)
            (subsystem / "subsysnqn").write_text(argv[argv.index("-n") + 1] + "\n")
            (self.devdir / "nvme0n1").symlink_to(loop)
        elif argv[1] == "disconnect":
            shutil.rmtree(subsystem)
            (self.devdir / "nvme0n1").unlink()
        return Result(0, "", "")


def which(name: str) -> str | None:
    return "/usr/sbin/nvme" if name == "nvme" else shutil.which(name)


def remote_config(base: Path, host: SshHost, **remote: Any) -> Config:
    cold = base / "cold"
    for sub in ("configfs/nvmet/subsystems", "configfs/nvmet/ports", "shm"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return config_from_dict(
        {
            "mountpoint": str(base / "mnt"),
            "state_dir": str(base / "state"),
            "cold": [{"name": "c", "path": str(cold)}],
            "policy": {"promote_on_open": False},
            "tier": [
                {
                    "name": POOL,
                    "path": str(base / "pool"),
                    "size": "24M",
                    "kind": "remote",
                    "remote": {
                        "ssh": host.destination,
                        "address": host.address,
                        "transport": "tcp",
                        "size": "32M",
                        "ssh_options": host.options,
                        "configfs": str(base / "configfs"),
                        "ramdisk_dir": str(base / "shm"),
                        **remote,
                    },
                }
            ],
        }
    )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SshHost]:
    with ssh_host(tmp_path / "sshd") as found:
        yield found


@pytest.fixture
def world(tmp_path: Path, host: SshHost) -> Iterator[tuple[Config, StandIn]]:
    (tmp_path / "cold" / "m").mkdir(parents=True)
    (tmp_path / "cold" / MODEL).write_bytes(os.urandom(3 * MiB))
    config = remote_config(tmp_path, host)
    (tmp_path / "sysfs").mkdir()
    (tmp_path / "dev").mkdir()
    image = tmp_path / "shm" / f"tierfs-{POOL}.img"
    stand_in = StandIn(tmp_path / "sysfs", tmp_path / "dev", image)
    try:
        yield config, stand_in
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "pool")], capture_output=True)
        for dev in run_command(["losetup", "-j", str(image)]).stdout.splitlines():
            subprocess.run(["losetup", "-d", dev.split(":")[0]], capture_output=True)


async def run_op(manager: PoolManager, action: str) -> dict[str, Any]:
    op = await (manager.connect(POOL) if action == "connect" else manager.disconnect(POOL))
    with trio.fail_after(120):
        await op.ended.wait()
    return op.to_json()


def with_pools(config: Config, stand_in: StandIn, body: Any) -> None:
    """Run `body(stack, manager)` on a fresh start of the stack (as after a restart)."""

    def tiers_of(catalog: Catalog) -> list[Tier]:
        return prepare_pools(catalog, config.tier)

    async def main() -> None:
        async with running_stack(config, tiers_of=tiers_of) as stack, trio.open_nursery() as n:
            manager = PoolManager(
                stack.catalog,
                stack.tiers,
                stack.mover,
                runner=stand_in,
                sysfs=stand_in.sysfs,
                devdir=stand_in.devdir,
                which=which,
            )
            await n.start(manager.run)
            await body(stack, manager)
            n.cancel_scope.cancel()

    trio.run(main)


def configfs_state(config: Config) -> dict[str, str]:
    """Every attribute and link written under the stand-in configfs, by relative path."""
    assert config.tier[0].remote is not None
    root = config.tier[0].remote.configfs
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = path.read_text().strip()
    return out


def test_connect_promote_disconnect(world: tuple[Config, StandIn], host: SshHost) -> None:
    config, stand_in = world
    pool_path = config.tier[0].path
    configfs = config.tier[0].remote.configfs  # type: ignore[union-attr]
    seen: dict[str, Any] = {}

    async def body(stack: Stack, manager: PoolManager) -> None:
        assert (await manager.pools())[0]["state"] == "disconnected"
        op = await run_op(manager, "connect")
        assert op["state"] == "done", op
        assert [s["name"] for s in op["steps"]] == [
            "tools", "ramdisk", "export", "connect", "namespace", "mkfs", "mount", "open",
        ]  # fmt: skip
        seen["configfs"] = configfs_state(config)
        seen["fstype"] = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", str(pool_path)], capture_output=True, text=True
        ).stdout.strip()
        job = await stack.mover.promote(MODEL, POOL, reason="command")
        await job.ended.wait()
        assert job.error is None
        hot = pool_path / "hot" / "c" / MODEL
        seen["hot"] = xxhash.xxh3_128_hexdigest(hot.read_bytes())
        op = await run_op(manager, "disconnect")
        assert op["state"] == "done", op
        seen["after"] = (stack.catalog.replicas(), await manager.pools())

    with_pools(config, stand_in, body)
    cold = xxhash.xxh3_128_hexdigest((config.cold[0].path / MODEL).read_bytes())
    assert seen["hot"] == cold
    assert seen["fstype"] == "ext4"
    assert stand_in.nvme == [
        ["nvme", "connect", "-t", "tcp", "-a", host.address, "-s", "4420", "-n", NQN],
        ["nvme", "disconnect", "-n", NQN],
    ]
    device = seen["configfs"][f"nvmet/subsystems/{NQN}/namespaces/1/device_path"]
    assert device.startswith("/dev/loop")
    assert seen["configfs"] == {
        "nvmet/ports/4420/addr_adrfam": "ipv4",
        "nvmet/ports/4420/addr_traddr": host.address,
        "nvmet/ports/4420/addr_trsvcid": "4420",
        "nvmet/ports/4420/addr_trtype": "tcp",
        f"nvmet/ports/4420/subsystems/{NQN}": f"-> {configfs}/nvmet/subsystems/{NQN}",
        f"nvmet/subsystems/{NQN}/attr_allow_any_host": "1",
        f"nvmet/subsystems/{NQN}/namespaces/1/device_path": device,
        f"nvmet/subsystems/{NQN}/namespaces/1/enable": "1",
    }
    replicas, pools = seen["after"]
    assert replicas == []
    assert (pools[0]["state"], pools[0]["free"]) == ("disconnected", 0)
    assert not os.path.ismount(pool_path)
    # Torn down on the remote side: unlinked, disabled, RAM disk detached and deleted.
    assert configfs_state(config)[f"nvmet/subsystems/{NQN}/namespaces/1/enable"] == "0"
    assert f"nvmet/ports/4420/subsystems/{NQN}" not in configfs_state(config)
    assert run_command(["losetup", "-j", str(stand_in.image)]).stdout == ""
    assert not stand_in.image.exists()


def test_cut_short_connect_resumes_or_rolls_back(
    world: tuple[Config, StandIn], host: SshHost
) -> None:
    config, stand_in = world
    record: dict[str, Any] = {}

    # Missing a tool: refused at the first step, before anything was done.
    saved = os.environ["PATH"]
    os.environ["PATH"] = "/usr/bin:/bin"  # no mkfs.ext4 (it lives in /usr/sbin)
    try:
        with_pools(config, stand_in, lambda s, m: _connect_into(record, s, m))
    finally:
        os.environ["PATH"] = saved
    first = record["op"]
    assert first["state"] == "failed"
    assert [s["state"] for s in first["steps"]] == [StepState.FAILED] + [StepState.SKIPPED] * 7
    assert "mkfs.ext4" in first["error"] and "\n" not in first["error"]

    # Now a failure in the middle: the attach fails after the RAM disk and the export.
    stand_in.fail_on = "connect"
    with_pools(config, stand_in, lambda s, m: _connect_into(record, s, m))
    failed = record["op"]
    assert [(s["name"], s["state"]) for s in failed["steps"]][:4] == [
        ("tools", "done"), ("ramdisk", "done"), ("export", "done"), ("connect", "failed"),
    ]  # fmt: skip
    assert record["catalog"].state == PoolState.FAILED
    assert (record["catalog"].action, record["catalog"].error) == ("connect", failed["error"])
    assert stand_in.image.exists()

    # A restart keeps it down; disconnect rolls back what the connect had done.
    stand_in.fail_on = None
    with_pools(config, stand_in, lambda s, m: _disconnect_into(record, s, m))
    assert record["op"]["state"] == OperationState.DONE, record["op"]
    assert record["start_state"] == "disconnected"
    assert not stand_in.image.exists()
    assert f"nvmet/ports/4420/subsystems/{NQN}" not in configfs_state(config)

    # Failed again at the attach, then connect resumes: the steps done find their work done.
    stand_in.fail_on = "connect"
    with_pools(config, stand_in, lambda s, m: _connect_into(record, s, m))
    stand_in.fail_on = None
    with_pools(config, stand_in, lambda s, m: _connect_into(record, s, m))
    resumed = record["op"]
    assert resumed["state"] == "done", resumed
    details = {s["name"]: s["detail"] for s in resumed["steps"]}
    assert details["ramdisk"].startswith("found a 32.0 MiB RAM disk /dev/loop"), details
    assert "exported" in details["export"] and "ext4 made" in details["mkfs"]
    assert len(run_command(["losetup", "-j", str(stand_in.image)]).stdout.splitlines()) == 1
    assert os.path.ismount(config.tier[0].path)
    with_pools(config, stand_in, lambda s, m: _disconnect_into(record, s, m))
    assert record["start_state"] == "connected"
    assert record["op"]["state"] == "done"


async def _connect_into(record: dict[str, Any], stack: Stack, manager: PoolManager) -> None:
    record["start_state"] = (await manager.pools())[0]["state"]
    record["op"] = await run_op(manager, "connect")
    record["catalog"] = stack.catalog.pool_records()[POOL]


async def _disconnect_into(record: dict[str, Any], stack: Stack, manager: PoolManager) -> None:
    record["start_state"] = (await manager.pools())[0]["state"]
    record["op"] = await run_op(manager, "disconnect")


def test_unreachable_host_and_missing_tool_are_one_line(
    tmp_path: Path, host: SshHost, world: tuple[Config, StandIn]
) -> None:
    _, stand_in = world
    # Nothing listens on port 2222 of the test host.
    refused = remote_config(tmp_path, host, ssh_options=[*host.options, "-p", "2222"])
    record: dict[str, Any] = {}
    with_pools(refused, stand_in, lambda s, m: _connect_into(record, s, m))
    error = record["op"]["error"]
    assert error.startswith(f"cannot reach {host.destination} over ssh: ") and "\n" not in error
    assert "2222" in error


def test_configfs_scripts_are_idempotent(tmp_path: Path) -> None:
    """Run twice, the export and its removal end where they ended the first time."""
    (tmp_path / "cold").mkdir()
    (tmp_path / "configfs" / "nvmet" / "subsystems").mkdir(parents=True)
    (tmp_path / "configfs" / "nvmet" / "ports").mkdir(parents=True)
    tier = remote_config(
        tmp_path, SshHost("root@h", "fd00::2", [], "fd00::3"), address="fd00::2"
    ).tier[0]
    target = RemoteTarget.of(tier)
    config_root = tmp_path / "configfs"
    for _ in range(2):
        subprocess.run(["sh", "-c", export_script(target, "/dev/loop7")], check=True)
    ports = config_root / "nvmet" / "ports" / "4420"
    assert (ports / "addr_adrfam").read_text().strip() == "ipv6"
    assert (ports / "subsystems" / NQN).is_symlink()
    for _ in range(2):
        subprocess.run(["sh", "-c", unexport_script(target)], check=True)
    assert not (ports / "subsystems" / NQN).exists()


def test_the_namespace_is_found_by_its_nqn(tmp_path: Path) -> None:
    root = tmp_path / "class" / "nvme-subsystem"
    for subsystem, nqn, entries in (
        ("nvme-subsys0", "nqn.2014-08.org.example:other", ["nvme0", "nvme0n1"]),
        ("nvme-subsys1", NQN, ["nvme1", "nvme1c1n1", "nvme1n1", "nvme1n2"]),
    ):
        for entry in entries:
            (root / subsystem / entry).mkdir(parents=True)
        (root / subsystem / "subsysnqn").write_text(nqn + "\n")
    assert find_namespace(NQN, tmp_path, Path("/dev")) == Path("/dev/nvme1n1")
    assert find_namespace("nqn.2014-08.io.tierfs:absent", tmp_path, Path("/dev")) is None
    assert find_namespace(NQN, tmp_path / "nothing", Path("/dev")) is None
