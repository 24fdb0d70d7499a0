"""Thin glue for inference engines (vLLM plugin, SGLang recipe)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from loader.errors import CheckpointError
from loader.session import safe_open

log = logging.getLogger(__name__)


def checkpoint_paths(model_dir: str) -> str | list[str]:
    """The weights to load from a model directory: its index when it has one (which skips
    stray consolidated files), else every ``*.safetensors`` file.

    Raises:
        CheckpointError: the directory holds no safetensors weights.
    """
    if not os.path.isdir(model_dir):
        raise CheckpointError(model_dir, "not a local model directory")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        return index
    files = sorted(
        os.path.join(model_dir, n) for n in os.listdir(model_dir) if n.endswith(".safetensors")
    )
    if not files:
        raise CheckpointError(model_dir, "no *.safetensors weights")
    return files


def iter_weights(
    paths: str | list[str],
    device: str | int | torch.device = "cpu",
    process_group: Any = None,
    **options: Any,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs in file order, the shape engines' ``load_weights`` expects."""
    with safe_open(paths, device=device, process_group=process_group, **options) as f:
        yield from f.tensors()
