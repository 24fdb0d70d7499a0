"""The demo model as a llama-architecture GGUF that llama.cpp loads and generates from."""

from __future__ import annotations

import errno
import os
import string
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from tierfs.ops.demo.layout import DemoError, TinyLlamaShape

_SPM_SPACE = "\u2581"  # sentencepiece's word-boundary marker
_COMMON_WORDS = (
    "the of and to in is it that was for on are as with he they at be this from have or by"
    " one had not but what all were when we there can an your which their said if do will"
    " each about how up out them then she many some so these would other into has more her"
    " two like him see time could no make than first been its who now people my made over"
    " did down only way find use may water long little very after words called just where"
    " most know model weights tier cold hot cache file"
)


def spm_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A sentencepiece-style vocabulary that llama.cpp's "llama" tokenizer accepts.

    llama.cpp aborts on a llama vocab without the 256 byte-fallback tokens, so ids 3..258 are
    ``<0x00>``..``<0xFF>``; the rest are characters and common English fragments, ranked by a
    descending score so merges prefer longer, earlier pieces.

    Returns:
        (tokens, scores, token types) of length ``size``.

    Raises:
        DemoError: ``size`` is too small for the byte tokens and the pieces.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = [_SPM_SPACE, *string.ascii_letters, *string.digits, *".,!?'-:;()\""]
    pieces += [_SPM_SPACE + c for c in string.ascii_lowercase]
    words = _COMMON_WORDS.split()
    pieces += [_SPM_SPACE + w for w in words]
    pieces += ["th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or"]
    for a in string.ascii_lowercase:
        for b in string.ascii_lowercase:
            if len(tokens) + len(pieces) >= size:
                break
            candidate = _SPM_SPACE + a + b
            if candidate not in pieces:
                pieces.append(candidate)
    pieces = list(dict.fromkeys(pieces))[: size - len(tokens)]
    if len(tokens) + len(pieces) != size:
        raise DemoError(f"cannot build a {size}-token vocabulary", errno=errno.EINVAL)
    scores = [0.0] * len(tokens) + [-float(n) for n in range(len(pieces))]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, scores, [int(t) for t in types]


def _rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # HF rotates the two halves of each head; llama.cpp's llama rope rotates adjacent pairs.
    # Reordering rows per head makes the GGUF compute exactly what the HF model computes.
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _gguf_tensors(
    sd: dict[str, torch.Tensor], shape: TinyLlamaShape
) -> Iterator[tuple[str, np.ndarray]]:
    yield "token_embd.weight", sd["model.embed_tokens.weight"].numpy()
    for n in range(shape.num_layers):
        p, b = f"model.layers.{n}.", f"blk.{n}."
        yield b + "attn_norm.weight", sd[p + "input_layernorm.weight"].numpy()
        q = _rope_interleave(sd[p + "self_attn.q_proj.weight"], shape.num_heads)
        k = _rope_interleave(sd[p + "self_attn.k_proj.weight"], shape.num_kv_heads)
        yield b + "attn_q.weight", q.numpy()
        yield b + "attn_k.weight", k.numpy()
        yield b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"].numpy()
        yield b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"].numpy()
        yield b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"].numpy()
        yield b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"].numpy()
        yield b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"].numpy()
        yield b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"].numpy()
    yield "output_norm.weight", sd["model.norm.weight"].numpy()
    yield "output.weight", sd["lm_head.weight"].numpy()


def write_llama_gguf(path: Path, sd: dict[str, torch.Tensor], shape: TinyLlamaShape) -> None:
    """Write ``sd`` (HF names) as an f32 llama-architecture GGUF with an SPM vocabulary.

    Args:
        path: destination; written through a temporary file and renamed into place.
        sd: weights as returned by :func:`llama_state_dict`.
        shape: hyper-parameters matching ``sd``.
    """
    tokens, scores, types = spm_vocab(shape.vocab_size)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, array in _gguf_tensors(sd, shape):
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
