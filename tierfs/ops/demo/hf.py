"""The demo's HF model directory: two safetensors shards, their index and the configs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierfs.ops.demo.files import Writer
from tierfs.ops.demo.layout import HF_SHARDS, TinyLlamaShape
from tierfs.ops.demo.weights import hf_config, json_bytes, safetensors_bytes

if TYPE_CHECKING:
    import torch


def build_hf_dir(w: Writer, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> None:
    """Write the HF model directory of ``sd`` under ``hf/tiny-llama``."""
    # Shard 1: embeddings and the first half of the layers; shard 2: the rest.
    split = shape.num_layers // 2
    first = {
        k: v
        for k, v in sd.items()
        if k == "model.embed_tokens.weight"
        or (k.startswith("model.layers.") and int(k.split(".")[2]) < split)
    }
    shards = (first, {k: v for k, v in sd.items() if k not in first})
    weight_map: dict[str, str] = {}
    total = 0
    for shard_name, tensors in zip(HF_SHARDS, shards, strict=True):
        w.write(f"hf/tiny-llama/{shard_name}", safetensors_bytes(tensors))
        for k, v in tensors.items():
            weight_map[k] = shard_name
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    w.write("hf/tiny-llama/model.safetensors.index.json", json_bytes(index))
    w.write("hf/tiny-llama/config.json", json_bytes(hf_config(shape)))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False, "max_length": 64}
    w.write("hf/tiny-llama/generation_config.json", json_bytes(generation))
