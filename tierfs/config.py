"""The tierfs configuration: one TOML file, validated by pydantic.

Keys that exist today keep their meaning; new keys are added with defaults so that
configs written for an older version keep working.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from tierfs import DEFAULT_CONFIG_PATH
from tierfs.errors import ConfigError
from tierfs.units import format_size, parse_size, short_repr

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def physical_memory() -> int:
    """Bytes of RAM in this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


Size = Annotated[int, BeforeValidator(parse_size)]


def _to_path(value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"expected a path string, got {short_repr(value)}")
    text = os.fsencode(value)
    # Refused here, or the checks below (exists, is_dir) would raise OSError instead.
    if b"\0" in text:
        raise ValueError(f"{short_repr(value)} contains a NUL byte")
    if len(text) >= 4096 or any(len(part) > 255 for part in text.split(b"/")):
        raise ValueError(f"{short_repr(value)} is too long for a path")
    return Path(os.fsdecode(text))


# Our own validator rather than pydantic's, which holds on to the pathlib class it saw
# at import time.
PathValue = Annotated[Path, PlainValidator(_to_path), PlainSerializer(str, return_type=str)]


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ColdStoreConfig(_Strict):
    """A read-only store of model files. tierfs never writes to it."""

    name: str
    path: PathValue

    _name = field_validator("name")(_check_name)

    @field_validator("path")
    @classmethod
    def _path_is_directory(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        if not value.exists():
            raise ValueError(f"{str(value)!r} does not exist")
        if not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return value


class RemoteConfig(_Strict):
    """How to bring a remote pool up: another host's RAM, exported over NVMe-oF.

    See docs/pools.md for the steps ``tierfs pool connect`` runs with these.
    """

    # Where the RAM disk is made and exported: `ssh` runs the target's side there.
    ssh: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.@:\[\]-]+$")
    # The target's address on the storage network (what `nvme connect -a` gets).
    address: str = Field(min_length=1, max_length=255)
    transport: Literal["rdma", "tcp"] = "tcp"
    port: int = Field(default=4420, ge=1, le=65535)
    # The RAM disk's size on the remote host; the tier's own `size` by default.
    size: Size | None = None
    # The subsystem's NQN; nqn.2014-08.io.tierfs:<tier name> by default.
    nqn: str | None = Field(default=None, min_length=1, max_length=223)
    # Extra ssh arguments (an identity file, a known-hosts file, a port).
    ssh_options: list[str] = Field(default_factory=list)
    # On the remote host: where configfs is mounted, and where the RAM disk's file lives.
    configfs: PathValue = Path("/sys/kernel/config")
    ramdisk_dir: PathValue = Path("/dev/shm")

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value


class TierConfig(_Strict):
    """A RAM tier that holds hot copies.

    ``kind = "ram"`` is a local tmpfs; ``kind = "remote"`` is another host's RAM disk
    exported over NVMe-oF and mounted at ``path`` by the operator.
    """

    name: str
    path: PathValue
    size: Size
    rank: int = 0
    kind: Literal["ram", "remote"] = "ram"
    # As root, mount a tmpfs of `size` at `path` when it is not a mount point yet.
    mount_tmpfs: bool = True
    # Back that tmpfs with transparent huge pages (huge=within_size): writing a hot copy
    # then touches a 512th of the pages, which on a VM is most of a promotion's cost.
    huge_pages: bool = True
    # kind = "remote" only: how `tierfs pool connect` brings it up (else the operator does).
    remote: RemoteConfig | None = None

    _name = field_validator("name")(_check_name)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        return value

    @field_validator("size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1 << 20:
            raise ValueError(f"{value} bytes is too small for a tier (at least 1MiB)")
        return value

    @model_validator(mode="after")
    def _fits_in_ram(self) -> TierConfig:
        # A tmpfs may be given any size, and fills RAM and swap until the OOM killer
        # picks a victim. A remote tier's size is another host's business.
        if self.remote is not None and self.kind != "remote":
            raise ValueError(f'tier {self.name!r} has [tier.remote] but kind is not "remote"')
        ram = physical_memory()
        if self.kind == "ram" and self.size > ram:
            raise ValueError(
                f"size {format_size(self.size)} of ram tier {self.name!r} exceeds this "
                f"machine's RAM ({format_size(ram)})"
            )
        return self


class PolicyConfig(_Strict):
    """When models move between tiers by themselves."""

    promote_on_open: bool = True
    # Files smaller than this never trigger a promotion on open.
    min_size: Size = 0
    # After a model was demoted, it is not promoted again on open for this long.
    cooldown_s: float = Field(default=300.0, ge=0)
    high_watermark: float = Field(default=0.95, gt=0, le=1)
    low_watermark: float = Field(default=0.85, gt=0, le=1)
    max_parallel_copies: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _watermarks_ordered(self) -> PolicyConfig:
        if self.low_watermark > self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must not exceed "
                f"high_watermark ({self.high_watermark})"
            )
        return self


# The placement strategies (README: placement strategies); the mover decides by them.
Strategy = Literal["fastest-fit", "fill-first", "round-robin"]


class PlacementConfig(_Strict):
    """Which tier a promotion goes to when none is named (README: placement strategies)."""

    # fastest-fit: the fastest tier with room now; evict only when none has room.
    # fill-first: the fastest tier that can hold it, evicting its LRU models down a tier.
    # round-robin: rotate over the tiers with room now.
    strategy: Strategy = "fastest-fit"


class ReadConfig(_Strict):
    """Tuning of the read path through the mount. The defaults are meant to be right."""

    # Kernel readahead of the mount's backing device info (bdi read_ahead_kb).
    readahead: Size = 16 << 20
    # How far ahead of a sequential reader tierfs pushes bytes into the page cache itself
    # (notify_store). Off by default: on Linux 6.18 the kernel's own readahead, with
    # requests served by worker threads, measured as fast or faster (docs/benchmarks.md).
    prefetch_window: Size = 0
    prefetch_chunk: Size = 4 << 20
    io_threads: int = Field(default=8, ge=1, le=256)
    # FUSE passthrough: the kernel reads the backing copy itself, at native speed and with
    # its bytes cached once. "auto" uses it where the kernel, libfuse and privileges allow
    # (else the daemon serves reads, and says why); "require" refuses to mount without it.
    passthrough: Literal["auto", "off", "require"] = "auto"

    @field_validator("prefetch_chunk")
    @classmethod
    def _page_multiple(cls, value: int) -> int:
        if value <= 0 or value % 4096:
            raise ValueError(f"{value} is not a positive multiple of 4096")
        return value


def _check_listen(value: str) -> str:
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{value!r} is not HOST:PORT (or "" to turn the web GUI off)')
    return value


class WebConfig(_Strict):
    """The web GUI and its API over HTTP, behind a token."""

    # HOST:PORT to serve on; "" turns the web listener off.
    listen: str = "127.0.0.1:5050"
    # The bearer token; created (mode 0600) at first start. Default: <state_dir>/web.token.
    token_file: PathValue | None = None

    _listen = field_validator("listen")(_check_listen)


class Config(_Strict):
    """The whole configuration of one tierfs mount."""

    mountpoint: PathValue = Path("/models")
    state_dir: PathValue = Path("/var/lib/tierfs")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_other: bool = False
    # Let the kernel check the presented modes, so the mount behaves like a local disk.
    default_permissions: bool = True
    cold: list[ColdStoreConfig] = Field(min_length=1)
    tier: list[TierConfig] = Field(default_factory=list)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    read: ReadConfig = Field(default_factory=ReadConfig)
    web: WebConfig = Field(default_factory=WebConfig)

    @field_validator("mountpoint", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        return value

    @field_validator("state_dir")
    @classmethod
    def _directory_or_missing(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{str(value)!r} exists and is not a directory")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        _unique([c.name for c in self.cold], "cold", "name")
        _unique([str(c.path) for c in self.cold], "cold", "path")
        _unique([t.name for t in self.tier], "tier", "name")
        _unique([str(t.path) for t in self.tier], "tier", "path")
        clash = {c.name for c in self.cold} & {t.name for t in self.tier}
        if clash:
            raise ValueError(f"name {sorted(clash)[0]!r} is used by a cold store and a tier")
        for store in self.cold:
            if _is_within(self.mountpoint, store.path) or _is_within(store.path, self.mountpoint):
                raise ValueError(
                    f"mountpoint {str(self.mountpoint)!r} overlaps cold store {store.name!r}"
                )
        for i, tier in enumerate(self.tier):
            where = f"tier {tier.name!r} at {str(tier.path)!r}"
            for store in self.cold:
                if _is_within(tier.path, store.path) or _is_within(store.path, tier.path):
                    raise ValueError(f"{where} overlaps cold store {store.name!r}")
            if _is_within(tier.path, self.mountpoint) or _is_within(self.mountpoint, tier.path):
                raise ValueError(f"{where} overlaps mountpoint {str(self.mountpoint)!r}")
            for other in self.tier[i + 1 :]:
                if _is_within(tier.path, other.path) or _is_within(other.path, tier.path):
                    raise ValueError(f"{where} overlaps tier {other.name!r}")
            if _is_within(self.state_dir, tier.path) or _is_within(tier.path, self.state_dir):
                raise ValueError(f"{where} overlaps state_dir {str(self.state_dir)!r}")
        self._state_dir_apart()
        if self.allow_other and not self.default_permissions:
            # Without the kernel's mode checks, every local user reads every file.
            raise ValueError(
                "allow_other = true needs default_permissions = true, or every local "
                "user can read every file of the mount, whatever its mode"
            )
        return self

    def _state_dir_apart(self) -> None:
        state = self.state_dir
        # The daemon creates it before it answers the kernel's FUSE INIT: inside its own
        # mount, that mkdir would wait forever on the daemon itself.
        if _is_within(state, self.mountpoint):
            raise ValueError(
                f"state_dir {str(state)!r} lies inside mountpoint {str(self.mountpoint)!r}"
            )
        for store in self.cold:
            # Cold storage is never written; the catalog is.
            if _is_within(state, store.path):
                raise ValueError(f"state_dir {str(state)!r} lies inside cold store {store.name!r}")

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.sqlite"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def web_token_path(self) -> Path:
        return self.web.token_file or self.state_dir / "web.token"


def _unique(values: list[str], section: str, key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"two [[{section}]] entries have {key} {value!r}")
        seen.add(value)


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.resolve().relative_to(outer.resolve())
    except ValueError:
        return False
    return True


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def config_from_dict(data: dict[str, Any], *, source: str = "<config>") -> Config:
    """Validate a parsed config.

    Args:
        data: the TOML document as a dict.
        source: the file name used in error messages.

    Raises:
        ConfigError: naming the file, the key and what is wrong.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _format_loc(tuple(first["loc"])) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        elif "input" in first and first["type"].endswith("_type"):
            message = f"{message} (got {short_repr(first['input'])})"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(message, path=source, key=key) from None


def load_config(path: Path | None = None) -> Config:
    """Read and validate a config file.

    Args:
        path: the TOML file; `DEFAULT_CONFIG_PATH` when None.

    Raises:
        ConfigError: the file is missing, not TOML, or not a valid config.
    """
    path = path or Path(os.environ.get("TIERFS_CONFIG", DEFAULT_CONFIG_PATH))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", path=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(path)) from None
    except RecursionError:
        raise ConfigError("invalid TOML: nested too deeply", path=str(path)) from None
    return config_from_dict(data, source=str(path))


def to_toml(config: Config) -> str:
    """Render a config as TOML, the effective values included."""
    # Imported here: `tierfs config show` and install need it, a mount does not.
    import tomlkit

    return tomlkit.dumps(_without_unset(config.model_dump(mode="json")))


def _without_unset(value: Any) -> Any:
    # TOML has no null: an unset optional key (web.token_file, say) is left out.
    if isinstance(value, dict):
        return {k: _without_unset(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_unset(v) for v in value]
    return value
