"""Thin glue for inference engines (vLLM plugin, SGLang recipe)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from loader.errors import CheckpointError
from loader.session import safe_open


def checkpoint_paths(model: str, revision: str | None = None) -> str | list[str]:
    """The weights to load for ``model``: its index when it has one (which skips stray
    consolidated files), else every ``*.safetensors`` file.

    Args:
        model: a local model directory, or a Hugging Face repo id (``org/name``) that is
            resolved in the local hub cache (``$HF_HUB_CACHE``, which may be a tierfs
            mount). Nothing is downloaded: a tierfs namespace is read-only.
        revision: the branch, tag or commit of a repo id; default ``main``.

    Raises:
        CheckpointError: no such directory or cached repo, or it holds no safetensors weights.
    """
    model_dir = model if os.path.isdir(model) else _cached_snapshot(model, revision)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        return index
    files = sorted(
        os.path.join(model_dir, n) for n in os.listdir(model_dir) if n.endswith(".safetensors")
    )
    if not files:
        raise CheckpointError("no *.safetensors weights", path=model_dir)
    return files


def _cached_snapshot(repo_id: str, revision: str | None) -> str:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:
        raise CheckpointError(
            "not a local model directory (and huggingface_hub is not installed)", path=repo_id
        ) from None
    try:
        return str(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=["*.safetensors", "*.json"],
            )
        )
    except HFValidationError:
        raise CheckpointError("not a local model directory or a repo id", path=repo_id) from None
    except LocalEntryNotFoundError:
        rev = f" at revision {revision!r}" if revision else ""
        raise CheckpointError(
            f"not a local model directory, and not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}{rev}",
            path=repo_id,
        ) from None


def iter_weights(
    paths: str | list[str],
    device: str | int | torch.device = "cpu",
    process_group: Any = None,
    **options: Any,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs in file order, the shape engines' ``load_weights`` expects."""
    with safe_open(paths, device=device, process_group=process_group, **options) as f:
        yield from f.tensors()
