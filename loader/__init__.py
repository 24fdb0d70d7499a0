"""Fast safetensors loading with a ``safetensors``-style API.

>>> from loader import safe_open, load_file
>>> with safe_open("model.safetensors.index.json", device="cpu") as f:
...     for name, tensor in f.tensors():
...         ...
"""

from __future__ import annotations

from loader.backends import Backend, available_backends, register_backend
from loader.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    IntegrityError,
    LoaderError,
    LoaderIOError,
    SafetensorsFormatError,
    UnknownBackendError,
)
from loader.session import SafeOpen, load_file, safe_open

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "IntegrityError",
    "LoaderError",
    "LoaderIOError",
    "SafeOpen",
    "SafetensorsFormatError",
    "UnknownBackendError",
    "available_backends",
    "load_file",
    "register_backend",
    "safe_open",
]
