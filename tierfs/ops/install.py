"""``tierfs install``: the config, the systemd unit, and a check of the machine.

This module decides what an install writes and runs, and checks the machine; the CLI
asks the questions and prints. Every path is relative to a root (``/`` normally), so that
an install can be made for real into a scratch directory, or printed without doing
anything (``--dry-run``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tierfs.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    config_from_dict,
    format_size,
    parse_size,
    to_toml,
)
from tierfs.errors import ConfigError, TierfsError

UNIT_NAME = "tierfs.service"
UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_TIER_PATH = Path("/mnt/tierfs/ram0")
DEFAULT_MOUNTPOINT = Path("/models")
DEFAULT_STATE_DIR = Path("/var/lib/tierfs")
# A RAM tier larger than this share of memory leaves too little for the model servers.
TIER_RAM_WARN = 0.75


class InstallError(TierfsError):
    """A step of the install failed (a file cannot be written, a command failed)."""


@dataclass(frozen=True)
class FileStep:
    """A file the install writes: its final path (under the root) and content."""

    path: Path
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Check:
    """One finding about the machine. ``ok`` is None when it could not be told."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Plan:
    """Everything an install does, in order: directories, files, then commands."""

    dirs: list[Path] = field(default_factory=list)
    files: list[FileStep] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def under(root: Path, path: Path) -> Path:
    """`path` (absolute) as seen inside `root`."""
    return root / path.relative_to("/")


def cold_entry(spec: str, taken: set[str]) -> dict[str, str]:
    """A ``[[cold]]`` entry from ``PATH`` or ``NAME=PATH``; a name is made from the path.

    Raises:
        ConfigError: the spec is empty.
    """
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    if not path:
        raise ConfigError(f"{spec!r} is not PATH or NAME=PATH", path="--cold")
    if not name:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name).strip("-.") or "cold"
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return {"name": name, "path": path}


def memory_total() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_tier_size() -> str:
    """Half of RAM, in whole GiB (at least 1)."""
    return f"{max(memory_total() // 2 >> 30, 1)}G"


def build_config(
    cold: list[str],
    *,
    tier_size: str,
    tier_path: Path = DEFAULT_TIER_PATH,
    mountpoint: Path = DEFAULT_MOUNTPOINT,
    state_dir: Path = DEFAULT_STATE_DIR,
) -> Config:
    """The config an install writes, validated like any config file.

    Args:
        cold: ``PATH`` or ``NAME=PATH`` for each cold store, in priority order.
        tier_size: the RAM tier's size (``64G``); ``0`` means no tier.

    Raises:
        ConfigError: naming the option or key that is wrong.
    """
    if not cold:
        raise ConfigError("at least one cold store is required", path="--cold")
    taken: set[str] = set()
    data: dict[str, object] = {
        "mountpoint": str(mountpoint),
        "state_dir": str(state_dir),
        "allow_other": True,
        "cold": [cold_entry(spec, taken) for spec in cold],
    }
    try:
        size = parse_size(tier_size)
    except ValueError as exc:
        raise ConfigError(str(exc), path="--tier-size") from None
    if size:
        data["tier"] = [{"name": "ram0", "path": str(tier_path), "size": tier_size, "rank": 0}]
    return config_from_dict(data, source="tierfs install")


def unit_text(executable: Path, config_path: Path) -> str:
    """The packaged unit, with ExecStart pointing at `executable` and `config_path`."""
    template = resources.files("tierfs").joinpath("systemd", UNIT_NAME).read_text()
    start = shlex.join([str(executable), "mount", "--foreground", "--config", str(config_path)])
    return re.sub(r"(?m)^ExecStart=.*$", lambda _: f"ExecStart={start}", template, count=1)


def tierfs_executable() -> Path:
    """The ``tierfs`` command of this installation (next to its Python)."""
    beside = Path(sys.executable).with_name("tierfs")
    if beside.exists():
        return beside
    found = shutil.which("tierfs")
    return Path(found) if found else beside


def systemd_running(root: Path) -> bool:
    """Whether systemd is this machine's init (and so can start the unit now)."""
    return root == Path("/") and Path("/run/systemd/system").is_dir()


def plan_install(
    config: Config,
    *,
    root: Path = Path("/"),
    config_path: Path = DEFAULT_CONFIG_PATH,
    force: bool = False,
) -> Plan:
    """Work out what to write and run, without touching anything.

    Raises:
        ConfigError: the config file exists and `force` is not set.
    """
    target = under(root, config_path)
    if target.exists() and not force:
        raise ConfigError("already exists; pass --force to replace it", path=str(target))
    plan = Plan()
    plan.dirs = [under(root, config_path.parent), under(root, config.mountpoint)]
    header = "# Written by `tierfs install`: every effective value, defaults included.\n"
    plan.files.append(FileStep(target, header + to_toml(config)))
    unit = under(root, UNIT_DIR / UNIT_NAME)
    plan.files.append(FileStep(unit, unit_text(tierfs_executable(), config_path)))
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        plan.notes.append(
            f"systemctl is not installed: {unit} is written but not enabled "
            f"(enable it with: systemctl enable --now {UNIT_NAME})"
        )
    elif systemd_running(root):
        plan.commands.append([systemctl, "daemon-reload"])
        plan.commands.append([systemctl, "enable", "--now", UNIT_NAME])
    else:
        # systemctl enables a unit offline (it only makes the wants/ symlink), but nothing
        # can start it: systemd is not running here, or this install goes into another root.
        where = [] if root == Path("/") else [f"--root={root}"]
        plan.commands.append([systemctl, *where, "enable", UNIT_NAME])
        plan.notes.append(
            "systemd is not running"
            + ("" if root == Path("/") else f" in {root}")
            + f": {UNIT_NAME} is enabled for the next boot but not started"
        )
    return plan


def apply(plan: Plan) -> None:
    """Carry out a plan: make the directories, write the files, run the commands.

    Raises:
        InstallError: naming the file or command that failed.
    """
    for directory in plan.dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InstallError(
                f"cannot create {directory}: {exc.strerror}", path=str(directory)
            ) from None
    for step in plan.files:
        _write(step)
    for command in plan.commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            why = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
            raise InstallError(f"{shlex.join(command)} failed: {why[0]}")


def _write(step: FileStep) -> None:
    """Write a file atomically (temp file, then rename), so a reader never sees half of it."""
    try:
        step.path.parent.mkdir(parents=True, exist_ok=True)
        temp = step.path.with_name(f".{step.path.name}.tmp")
        temp.write_text(step.content)
        os.chmod(temp, step.mode)
        os.replace(temp, step.path)
    except OSError as exc:
        raise InstallError(
            f"cannot write {step.path}: {exc.strerror}", path=str(step.path)
        ) from None


# Checks of the machine ---------------------------------------------------------------


def check_machine(config: Config) -> list[Check]:
    """FUSE, FUSE passthrough, and the RAM tiers' size against memory."""
    return [check_fuse(), check_passthrough(), check_tier_memory(config)]


def check_fuse() -> Check:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        return Check("fuse", False, f"/dev/fuse cannot be opened: {exc.strerror}")
    os.close(fd)
    return Check("fuse", True, "/dev/fuse opens")


def kernel_config() -> str | None:
    """The running kernel's build config, if it can be read."""
    with contextlib.suppress(OSError), gzip.open("/proc/config.gz", "rt") as f:
        return f.read()
    with contextlib.suppress(OSError):
        return Path(f"/boot/config-{os.uname().release}").read_text()
    return None


def check_passthrough() -> Check:
    text = kernel_config()
    if text is None:
        return Check("passthrough", None, "the kernel config cannot be read")
    if "CONFIG_FUSE_PASSTHROUGH=y" not in text:
        return Check(
            "passthrough", False, "the kernel has no FUSE passthrough; reads go through tierfs"
        )
    try:
        import pyfuse3

        userspace = hasattr(pyfuse3.FileInfo, "backing_id")
    except ImportError:
        userspace = False
    if not userspace:
        return Check(
            "passthrough",
            False,
            "the kernel has FUSE passthrough, but this pyfuse3 build cannot use it",
        )
    return Check("passthrough", True, "kernel and pyfuse3 support FUSE passthrough")


def check_tier_memory(config: Config, total: int | None = None) -> Check:
    total = total if total is not None else memory_total()
    ram = sum(t.size for t in config.tier if t.kind == "ram")
    share = ram / total if total else 0.0
    detail = f"RAM tiers {format_size(ram)} of {format_size(total)} memory ({share:.0%})"
    if ram > total:
        return Check("tier size", False, detail + ": more than the machine has")
    if share > TIER_RAM_WARN:
        return Check(
            "tier size", False, detail + f": over {TIER_RAM_WARN:.0%} leaves little to serve"
        )
    return Check("tier size", True, detail)
