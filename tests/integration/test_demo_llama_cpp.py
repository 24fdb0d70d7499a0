"""Real llama.cpp (through llama-cpp-python) loads the demo GGUF and computes what transformers
computes from the HF copy of the same weights.

llama.cpp runs in a child interpreter: it aborts the whole process on a bad file, which would
otherwise take pytest down with it. The interpreter is ``$TIERFS_LLAMA_PYTHON`` or, by default,
the one running the tests; ``llama_cpp`` must be importable there. This test deliberately fails
rather than skips when it is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from tierfs.ops.demo import build_demo_store

pytestmark = pytest.mark.slow

LLAMA_PYTHON = os.environ.get("TIERFS_LLAMA_PYTHON", sys.executable)
PROMPT = "the model weights are cold"

_CHILD = r"""
import json, sys
from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=128, logits_all=True, verbose=False, seed=0)
ids = llm.tokenize(sys.argv[2].encode(), add_bos=True)
llm.eval(ids)
logits = [list(map(float, row)) for row in llm.scores[: len(ids)]]
llm.reset()
out = llm.create_completion(sys.argv[2], max_tokens=12, temperature=0.0)
print(json.dumps({
    "ids": ids,
    "text": llm.detokenize(ids).decode(),
    "logits": logits,
    "completion": out["choices"][0]["text"],
    "completion_tokens": out["usage"]["completion_tokens"],
}))
"""


def run_llama_cpp(gguf_path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [LLAMA_PYTHON, "-c", _CHILD, str(gguf_path), PROMPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"llama.cpp child failed ({LLAMA_PYTHON}):\n{proc.stderr[-3000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_llama_cpp_generates_and_matches_transformers(tmp_path: Path) -> None:
    store = build_demo_store(tmp_path / "demo")
    manifest = json.loads(store.ollama_manifest.read_text())
    ollama_blob = store.ollama_root / "blobs" / manifest["layers"][0]["digest"].replace(":", "-")

    model = LlamaForCausalLM.from_pretrained(store.hf_dir)
    for path in (store.gguf_file, ollama_blob):
        got = run_llama_cpp(path)
        ids = got["ids"]
        assert isinstance(ids, list) and ids[0] == 1  # BOS
        assert got["text"] == PROMPT  # the SPM vocabulary round-trips plain text
        assert isinstance(got["completion_tokens"], int) and got["completion_tokens"] >= 1

        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        logits = np.asarray(got["logits"], dtype=np.float32)
        assert logits.shape == expected.shape == (len(ids), 512)
        assert np.isfinite(logits).all()
        # Same weights, different kernels: equal up to float32 rounding noise.
        np.testing.assert_allclose(logits, expected, atol=2e-2, rtol=0)
        assert (logits.argmax(-1) == expected.argmax(-1)).all()
