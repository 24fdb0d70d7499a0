"""The steps of a remote pool: another host's RAM disk, exported with the kernel's NVMe
target (nvmet, configured through configfs) and attached here with nvme-cli.

Each step checks what is there before it changes anything, so running it twice, or
again after a crash half-way through it, ends in the same place.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tierfs.config import RemoteConfig, TierConfig
from tierfs.errors import PoolError
from tierfs.storage.pools.commands import RemoteShell, Runner
from tierfs.units import format_size

NQN_PREFIX = "nqn.2014-08.io.tierfs"
NAMESPACE_ID = 1
# How long `nvme connect` may take to make the namespace's block device appear.
ATTACH_TIMEOUT_S = 30.0
# A subsystem lists its namespaces as nvmeXnY (per-path nodes, nvmeXcZnY, are hidden).
_NAMESPACE_RE = re.compile(r"^nvme\d+n\d+$")


@dataclass(frozen=True)
class RemoteTarget:
    """Everything about one remote pool that its steps need, derived from the config."""

    pool: str
    remote: RemoteConfig
    size: int

    @classmethod
    def of(cls, tier: TierConfig) -> RemoteTarget:
        if tier.remote is None:
            raise PoolError(
                f"pool {tier.name!r} has no [tier.remote] table, so tierfs cannot connect it "
                "(its owner mounts it)",
                errno=errno.EINVAL,
            )
        return cls(tier.name, tier.remote, tier.remote.size or tier.size)

    @property
    def nqn(self) -> str:
        return self.remote.nqn or f"{NQN_PREFIX}:{self.pool}"

    @property
    def image(self) -> Path:
        return self.remote.ramdisk_dir / f"tierfs-{self.pool}.img"

    @property
    def nvmet(self) -> Path:
        return self.remote.configfs / "nvmet"

    @property
    def subsystem(self) -> Path:
        return self.nvmet / "subsystems" / self.nqn

    @property
    def port(self) -> Path:
        # One nvmet port per listening address and service id; pools on one host share it.
        return self.nvmet / "ports" / str(self.remote.port)

    @property
    def adrfam(self) -> str:
        return "ipv6" if ipaddress.ip_address(self.remote.address).version == 6 else "ipv4"


def ramdisk_script(t: RemoteTarget) -> str:
    """Make (or find) the RAM disk: a file in tmpfs behind a loop device.

    Prints its device, then ``made`` or ``found``.
    """
    img = shlex.quote(str(t.image))
    return (
        f"set -e; img={img}; how=found; "
        'dev=$(losetup -j "$img" | cut -d: -f1 | head -n 1); '
        f'if [ -z "$dev" ]; then truncate -s {t.size} "$img"; '
        'dev=$(losetup --find --show "$img"); how=made; fi; echo "$dev $how"'
    )


def export_writes(t: RemoteTarget, device: str) -> list[tuple[Path, str]]:
    """The configfs attributes the export sets, in order (what the script writes)."""
    ns = t.subsystem / "namespaces" / str(NAMESPACE_ID)
    return [
        (t.subsystem / "attr_allow_any_host", "1"),
        (ns / "device_path", device),
        (ns / "enable", "1"),
        (t.port / "addr_trtype", t.remote.transport),
        (t.port / "addr_adrfam", t.adrfam),
        (t.port / "addr_traddr", t.remote.address),
        (t.port / "addr_trsvcid", str(t.remote.port)),
    ]


def export_script(t: RemoteTarget, device: str) -> str:
    """Export `device` with nvmet: subsystem, namespace, port, and the port's link to it."""
    q = shlex.quote
    ns = t.subsystem / "namespaces" / str(NAMESPACE_ID)
    link = t.port / "subsystems" / t.nqn
    writes = export_writes(t, device)
    subsystem_writes = "; ".join(f"echo {q(v)} > {q(str(p))}" for p, v in writes[:1])
    # A namespace's device can only change while it is disabled, a port's address only
    # while nothing is linked to it: both are written once, never on a resumed run.
    ns_writes = "; ".join(f"echo {q(v)} > {q(str(p))}" for p, v in writes[1:3])
    port_writes = "; ".join(f"echo {q(v)} > {q(str(p))}" for p, v in writes[3:])
    return (
        f"set -e; mkdir -p {q(str(ns))} {q(str(t.port / 'subsystems'))}; {subsystem_writes}; "
        f'if [ "$(cat {q(str(ns / "enable"))} 2>/dev/null)" != 1 ]; then {ns_writes}; fi; '
        f'if [ -z "$(ls -A {q(str(t.port / "subsystems"))})" ]; then {port_writes}; fi; '
        f"[ -L {q(str(link))} ] || ln -s {q(str(t.subsystem))} {q(str(link))}"
    )


def unexport_script(t: RemoteTarget) -> str:
    """Undo `export_script`: unlink, disable, remove; a port other pools use stays."""
    q = shlex.quote
    ns = t.subsystem / "namespaces" / str(NAMESPACE_ID)
    link = t.port / "subsystems" / t.nqn
    return (
        f"set -e; rm -f {q(str(link))}; "
        f"if [ -e {q(str(ns / 'enable'))} ]; then echo 0 > {q(str(ns / 'enable'))}; fi; "
        f"rmdir {q(str(ns))} {q(str(t.subsystem))} 2>/dev/null || true; "
        f'if [ -z "$(ls -A {q(str(t.port / "subsystems"))} 2>/dev/null)" ]; then '
        f"rmdir {q(str(t.port))} 2>/dev/null || true; fi"
    )


def remove_ramdisk_script(t: RemoteTarget) -> str:
    """Detach the loop device and delete the RAM disk's file, if they are there."""
    img = shlex.quote(str(t.image))
    return (
        f"set -e; img={img}; "
        'for dev in $(losetup -j "$img" | cut -d: -f1); do losetup -d "$dev"; done; '
        'rm -f "$img"'
    )


def connect_argv(t: RemoteTarget) -> list[str]:
    r = t.remote
    return ["nvme", "connect", "-t", r.transport, "-a", r.address, "-s", str(r.port), "-n", t.nqn]


def disconnect_argv(t: RemoteTarget) -> list[str]:
    return ["nvme", "disconnect", "-n", t.nqn]


def find_namespace(nqn: str, sysfs: Path, devdir: Path) -> Path | None:
    """The block device of the first namespace of the attached subsystem `nqn`, if any.

    The kernel names controllers and namespaces in attach order, so the NQN is the only
    stable way to find ours: /sys/class/nvme-subsystem/*/subsysnqn.
    """
    root = sysfs / "class" / "nvme-subsystem"
    try:
        subsystems = sorted(root.iterdir())
    except FileNotFoundError:
        return None
    for subsystem in subsystems:
        try:
            found = (subsystem / "subsysnqn").read_text().strip()
        except OSError:
            continue
        if found != nqn:
            continue
        names = sorted(p.name for p in subsystem.iterdir() if _NAMESPACE_RE.match(p.name))
        if names:
            return devdir / names[0]
    return None


@dataclass
class RemoteSteps:
    """The step functions of one remote pool, bound to how commands run here.

    Args:
        target: the pool's remote side.
        runner: runs every external command (ssh, nvme, mkfs, mount).
        sysfs, devdir: where to look for the attached namespace (tests point them at a
            stand-in; see docs/pools.md).
        which: finds a program on PATH.
    """

    target: RemoteTarget
    runner: Runner
    sysfs: Path
    devdir: Path
    which: Callable[[str], str | None]
    # Found by the steps, for the steps after them.
    device: str = field(default="", init=False)
    block: Path = field(default=Path(), init=False)

    @property
    def shell(self) -> RemoteShell:
        r = self.target.remote
        return RemoteShell(self.runner, r.ssh, r.ssh_options)

    async def _run(self, argv: list[str]) -> str:
        return (await trio.to_thread.run_sync(lambda: self.runner(argv))).stdout

    async def _remote(self, script: str) -> str:
        return await trio.to_thread.run_sync(self.shell.run, script)

    async def tools(self) -> str:
        missing = [tool for tool in ("ssh", "nvme", "mkfs.ext4") if self.which(tool) is None]
        if missing:
            raise PoolError(
                f"pool {self.target.pool!r} needs {', '.join(missing)}, not installed here "
                "(apt install openssh-client nvme-cli e2fsprogs)",
                errno=errno.ENOENT,
            )
        return "ssh, nvme and mkfs.ext4 are installed"

    async def ramdisk(self) -> str:
        device, _, how = (await self._remote(ramdisk_script(self.target))).strip().partition(" ")
        if not device.startswith("/dev/"):
            raise PoolError(f"on {self.target.remote.ssh}: no loop device for the RAM disk")
        self.device = device
        size = format_size(self.target.size)
        return f"{how} a {size} RAM disk {device} on {self.target.remote.ssh}"

    async def export(self) -> str:
        await self._remote(export_script(self.target, self.device))
        r = self.target.remote
        return f"exported {self.target.nqn} on {r.transport}:{r.address}:{r.port}"

    async def attach(self) -> str:
        if self._namespace() is not None:
            return f"{self.target.nqn} is attached already"
        await self._run(connect_argv(self.target))
        return f"nvme connect {self.target.nqn}"

    def _namespace(self) -> Path | None:
        return find_namespace(self.target.nqn, self.sysfs, self.devdir)

    async def namespace(self) -> str:
        found = None
        with trio.move_on_after(ATTACH_TIMEOUT_S):
            while (found := await trio.to_thread.run_sync(self._namespace)) is None:
                await trio.sleep(0.2)
        if found is None:
            raise PoolError(
                f"no namespace of {self.target.nqn} appeared in {ATTACH_TIMEOUT_S:.0f}s "
                f"after nvme connect",
                errno=errno.ENODEV,
            )
        self.block = found
        return f"namespace {found}"

    async def mkfs(self) -> str:
        probe = await trio.to_thread.run_sync(
            lambda: self.runner(
                ["blkid", "-o", "value", "-s", "TYPE", str(self.block)], check=False
            )
        )
        if probe.stdout.strip():
            return f"{self.block} holds {probe.stdout.strip()} already"
        # No reserved blocks: the pool's size is what tierfs may fill.
        await self._run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.block)])
        return f"ext4 made on {self.block}"

    async def mount(self, path: Path) -> str:
        if await trio.to_thread.run_sync(os.path.ismount, path):
            return f"{path} is mounted already"
        await trio.to_thread.run_sync(lambda: path.mkdir(parents=True, exist_ok=True))
        await self._run(["mount", "-o", "noatime", str(self.block), str(path)])
        await trio.to_thread.run_sync(os.chmod, path, 0o755)
        return f"mounted {self.block} at {path}"

    async def detach(self) -> str:
        if await trio.to_thread.run_sync(self._namespace) is None:
            return f"{self.target.nqn} is not attached"
        await self._run(disconnect_argv(self.target))
        return f"nvme disconnect {self.target.nqn}"

    async def unexport(self) -> str:
        await self._remote(unexport_script(self.target))
        return f"removed the export of {self.target.nqn}"

    async def remove_ramdisk(self) -> str:
        await self._remote(remove_ramdisk_script(self.target))
        return f"removed the RAM disk on {self.target.remote.ssh}"
