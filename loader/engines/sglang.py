"""SGLang glue: swap SGLang's safetensors weight iterator for this loader's stream.

SGLang's default model loader reads ``*.safetensors`` through
``safetensors_weights_iterator(hf_weights_files, ...)`` imported into
``sglang.srt.model_loader.loader``.  ``install()`` replaces that name with ``weights_iterator``
below, in the current process (call it before the engine loads the model; with several
tensor-parallel workers, in each worker, e.g. from a ``sitecustomize``).  See docs/loader.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from loader.engines import iter_weights

log = logging.getLogger(__name__)


def weights_iterator(
    hf_weights_files: list[str], *args: Any, **kwargs: Any
) -> Iterator[tuple[str, torch.Tensor]]:
    """Drop-in for SGLang's ``safetensors_weights_iterator``; extra arguments are ignored.

    ``LOADER_DEVICE`` (default ``cpu``) picks where tensors land; SGLang's weight loaders
    copy them into the parameters either way.
    """
    device = os.environ.get("LOADER_DEVICE", "cpu")
    yield from iter_weights(sorted(hf_weights_files), device=device)


def install(module: Any = None) -> None:
    """Patch SGLang's loader module (or ``module``) to use ``weights_iterator``."""
    if module is None:
        import importlib

        module = importlib.import_module("sglang.srt.model_loader.loader")
    module.safetensors_weights_iterator = weights_iterator
    log.info("SGLang safetensors loading now goes through loader")
