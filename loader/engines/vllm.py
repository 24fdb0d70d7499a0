"""vLLM plugin: registers the ``tierfs`` load format (``--load-format tierfs``).

vLLM calls ``register`` through the ``vllm.general_plugins`` entry point in every process.
The loader class follows vLLM's ``BaseModelLoader`` contract (``download_model`` and
``load_weights(model, model_config)``) and feeds ``model.load_weights`` with this loader's
tensor stream.  Options come from ``--model-loader-extra-config``:

- ``backend``: backend candidates (``"direct,buffered"``), default automatic;
- ``verify``: check xxh3 against tierfs while loading;
- ``distributed``: split reading across the tensor-parallel group (each byte read once,
  tensors broadcast over NCCL) instead of every rank reading everything.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

from loader.engines import checkpoint_paths, iter_weights

log = logging.getLogger(__name__)

LOAD_FORMAT = "tierfs"
_registered: dict[str, type] = {}


def _options(load_config: Any) -> dict[str, Any]:
    extra = dict(getattr(load_config, "model_loader_extra_config", None) or {})
    opts: dict[str, Any] = {}
    if "backend" in extra:
        opts["backend"] = str(extra["backend"])
    if "verify" in extra:
        opts["verify"] = bool(extra["verify"])
    opts["_distributed"] = bool(extra.get("distributed", False))
    return opts


def _tp_group() -> Any:
    # Imported by name: vLLM is optional and has no type stubs here.
    return importlib.import_module("vllm.distributed").get_tp_group().device_group


def make_loader_class(base: type) -> type:
    """Build the loader class on top of vLLM's ``BaseModelLoader`` (passed in, so the class
    can be built against a stand-in in tests)."""

    class TierfsModelLoader(base):
        """Loads safetensors checkpoints with ``loader`` (tierfs-aware, storage-speed)."""

        def download_model(self, model_config: Any) -> None:
            # Only checks the weights are there: a tierfs namespace is read-only.
            checkpoint_paths(model_config.model, getattr(model_config, "revision", None))

        def load_weights(self, model: Any, model_config: Any) -> None:
            opts = _options(self.load_config)
            distributed = opts.pop("_distributed")
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
            group = _tp_group() if distributed else None
            wanted = {name for name, _ in model.named_parameters()}
            loaded = model.load_weights(
                iter_weights(
                    checkpoint_paths(model_config.model, getattr(model_config, "revision", None)),
                    device=device,
                    process_group=group,
                    **opts,
                )
            )
            # Same check as vLLM's default loader: unquantized models must be complete.
            if getattr(model_config, "quantization", None) is None and loaded is not None:
                missing = wanted - set(loaded)
                if missing:
                    raise ValueError(f"weights not initialized from checkpoint: {sorted(missing)}")

    return TierfsModelLoader


def register() -> None:
    """Entry point of ``vllm.general_plugins``: register the ``tierfs`` load format."""
    if LOAD_FORMAT in _registered:
        return
    try:
        mod = importlib.import_module("vllm.model_executor.model_loader")
        base, register_model_loader = mod.BaseModelLoader, mod.register_model_loader
    except (ImportError, AttributeError) as e:
        log.warning(
            "vLLM has no register_model_loader (%s); 'tierfs' load format not "
            "registered (needs vLLM >= 0.11)",
            e,
        )
        return
    cls = make_loader_class(base)
    register_model_loader(LOAD_FORMAT)(cls)
    _registered[LOAD_FORMAT] = cls
    log.info("registered vLLM load format %r", LOAD_FORMAT)
