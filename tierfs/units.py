"""Byte sizes as people write them in configs and read them in reports.

Kept apart from the config's pydantic models so that the CLI can format sizes without
importing pydantic.
"""

from __future__ import annotations

import re
from decimal import Decimal

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
# Sizes end up in off_t and in tmpfs's size=, both signed 64-bit.
MAX_SIZE = (1 << 63) - 1


def parse_size(value: object) -> int:
    """Parse a byte size such as ``200G``, ``512MiB``, ``1.5T`` or a plain integer.

    Units are binary (``G`` means GiB), as for tmpfs ``size=``.

    Args:
        value: an int, or a string with an optional unit.

    Raises:
        ValueError: the value is not a non-negative size.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '200G', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return _bounded(value, value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit, _suffix = match.groups()
            if len(number.partition(".")[0].lstrip("0")) > 20:
                return _bounded(MAX_SIZE + 1, value)
            # Decimal, not float: a float of many digits overflows or loses bytes.
            return _bounded(int(Decimal(number) * (1 << _SIZE_SHIFT[unit.lower()])), value)
    raise ValueError(f"expected a size like '200G' or '512MiB', got {short_repr(value)}")


def _bounded(size: int, value: object) -> int:
    if size > MAX_SIZE:
        raise ValueError(f"size {short_repr(value)} is too large (the limit is just under 8 EiB)")
    return size


def short_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def format_size(n: float) -> str:
    """Format a byte count with a binary unit, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
