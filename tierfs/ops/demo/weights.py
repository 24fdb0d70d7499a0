"""The demo model's weights and config, and their safetensors and JSON encodings."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save as safetensors_save

from tierfs.ops.demo.layout import TinyLlamaShape


def llama_state_dict(shape: TinyLlamaShape, seed: int) -> dict[str, torch.Tensor]:
    """Random f32 weights under the names and shapes ``LlamaForCausalLM`` expects.

    Args:
        shape: model hyper-parameters.
        seed: seed of the torch generator; equal seeds give equal tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    h, i, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim

    def normal(*dims: int) -> torch.Tensor:
        # A larger std than HF's 0.02 keeps logits far from uniform, so greedy generation
        # actually depends on the weights.
        return torch.randn(*dims, generator=gen, dtype=torch.float32) * 0.2

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(shape.vocab_size, h)}
    for n in range(shape.num_layers):
        p = f"model.layers.{n}."
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "self_attn.q_proj.weight"] = normal(shape.num_heads * hd, h)
        sd[p + "self_attn.k_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        sd[p + "self_attn.v_proj.weight"] = normal(shape.num_kv_heads * hd, h)
        sd[p + "self_attn.o_proj.weight"] = normal(h, shape.num_heads * hd)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
        sd[p + "mlp.gate_proj.weight"] = normal(i, h)
        sd[p + "mlp.up_proj.weight"] = normal(i, h)
        sd[p + "mlp.down_proj.weight"] = normal(h, i)
    sd["model.norm.weight"] = torch.ones(h)
    sd["lm_head.weight"] = normal(shape.vocab_size, h)
    return sd


def hf_config(shape: TinyLlamaShape) -> dict[str, object]:
    """``config.json`` contents for the demo model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.context_length,
        "rms_norm_eps": shape.rms_norm_eps,
        # Older transformers read rope_theta, newer ones rope_parameters.
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def json_bytes(doc: object) -> bytes:
    """``doc`` as stable, indented JSON."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` as a safetensors file."""
    data: bytes = safetensors_save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"}
    )
    return data


def embedding_table(shape: TinyLlamaShape, seed: int) -> torch.Tensor:
    """The unrelated f16 embedding table of ``misc/embeddings.safetensors``."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(shape.vocab_size, shape.hidden_size, generator=gen).to(torch.float16)
