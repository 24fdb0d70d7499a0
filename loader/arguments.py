"""What a caller passes to ``safe_open``: sizes, devices and the files of a checkpoint.

Each function turns one kind of argument (or environment setting) into the value the loader
uses, and raises tierfs's `ConfigError` or a `CheckpointError` naming what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from loader.errors import CheckpointError, ConfigError
from tierfs import units

PathsLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def parse_size(value: str | int | None, what: str) -> int | None:
    """Parse ``"16M"``, ``"1GiB"``, ``"65536"`` or an int, by tierfs's rule (binary units).

    Raises:
        ConfigError: the value is not a size.
    """
    if value is None or value == "":
        return None
    try:
        return units.parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{value!r} is not a size ({exc})", key=what) from None


def env_int(name: str) -> int | None:
    """An environment setting that must be a whole number; ``None`` when unset.

    Raises:
        ConfigError: the setting is not a whole number.
    """
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number", key=name) from None


def expand_paths(paths: PathsLike) -> list[str]:
    """Turn a file, list, directory or ``*.index.json`` into the ordered list of files.

    Raises:
        CheckpointError: nothing to load, or an index that cannot be read.
    """
    if isinstance(paths, (str, os.PathLike)):
        items = [os.fspath(paths)]
    else:
        items = [os.fspath(p) for p in paths]
    out: list[str] = []
    for p in items:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".safetensors"))
            if not found:
                raise CheckpointError("directory holds no .safetensors files", path=p)
            out += found
        elif p.endswith(".json"):
            out += _index_files(p)
        else:
            out.append(p)
    if not out:
        raise CheckpointError("no files given")
    seen: set[str] = set()
    unique = []
    for p in out:
        ap = os.path.abspath(p)
        if ap not in seen:
            seen.add(ap)
            unique.append(ap)
    return unique


def _index_files(index: str) -> list[str]:
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the index: {e}", path=index) from e
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError("index has no weight_map of tensor -> file names", path=index)
    base = os.path.dirname(os.path.abspath(index))
    names = sorted(set(wm.values()))
    for n in names:
        if os.path.isabs(n) or ".." in n.split("/"):
            raise CheckpointError(f"index names a file outside its directory: {n!r}", path=index)
    return [os.path.join(base, n) for n in names]


def parse_device(device: str | int | torch.device) -> torch.device:
    """``"cpu"``, ``0``, ``"cuda:0"`` or a torch.device.

    Raises:
        ConfigError: not a device.
    """
    try:
        if isinstance(device, int):
            return torch.device("cuda", device)
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{device!r} is not a device: {e}", key="device") from None
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"{d} is not supported (cpu or cuda)", key="device")
    return d
