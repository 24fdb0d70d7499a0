"""Engine glue against stand-ins that follow vLLM's and SGLang's documented interfaces.

No real engine is installed here: these tests pin the contract (entry point, registration
call, ``load_weights`` flow, iterator signature), not a live engine run.
"""

from __future__ import annotations

import abc
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from loader.engines import checkpoint_paths
from tests.loader_testutil import digest


class StandInBaseModelLoader(abc.ABC):
    """Mirrors vllm.model_executor.model_loader.BaseModelLoader's abstract interface."""

    def __init__(self, load_config: Any) -> None:
        self.load_config = load_config

    @abc.abstractmethod
    def download_model(self, model_config: Any) -> None: ...

    @abc.abstractmethod
    def load_weights(self, model: Any, model_config: Any) -> None: ...


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    registry: dict[str, type] = {}

    def register_model_loader(name: str) -> Any:
        def deco(cls: type) -> type:
            assert issubclass(cls, StandInBaseModelLoader)
            registry[name] = cls
            return cls

        return deco

    mod = types.ModuleType("vllm.model_executor.model_loader")
    mod.BaseModelLoader = StandInBaseModelLoader  # type: ignore[attr-defined]
    mod.register_model_loader = register_model_loader  # type: ignore[attr-defined]
    for name in ("vllm", "vllm.model_executor"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.model_executor.model_loader", mod)
    import loader.engines.vllm as plugin

    monkeypatch.setattr(plugin, "_registered", {})
    return registry


class TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(4, 8))
        self.b = torch.nn.Parameter(torch.zeros(3))
        self.seen: list[str] = []

    def load_weights(self, weights: Any) -> set[str]:
        params = dict(self.named_parameters())
        done = set()
        for name, t in weights:
            self.seen.append(name)
            params[name].data.copy_(t)
            done.add(name)
        return done


def _model_dir(tmp_path: Path, with_b: bool = True) -> dict[str, torch.Tensor]:
    ref = {"a": torch.randn(4, 8)}
    if with_b:
        ref["b"] = torch.randn(3)
    save_file(ref, str(tmp_path / "model.safetensors"))
    return ref


def test_entry_point_declared_and_importable() -> None:
    pyproject = tomllib.loads(Path("pyproject.toml").read_text())
    ep = pyproject["project"]["entry-points"]["vllm.general_plugins"]["tierfs"]
    module, func = ep.split(":")
    mod = __import__(module, fromlist=[func])
    assert callable(getattr(mod, func))


def test_register_and_load_weights(fake_vllm: dict[str, type], tmp_path: Path) -> None:
    from loader.engines.vllm import register

    ref = _model_dir(tmp_path)
    register()
    register()  # idempotent: vLLM calls plugins in every process
    cls = fake_vllm["tierfs"]
    config = types.SimpleNamespace(model_loader_extra_config={"backend": "buffered"})
    model_config = types.SimpleNamespace(model=str(tmp_path), quantization=None)
    inst = cls(config)
    inst.download_model(model_config)
    model = TinyModel()
    inst.load_weights(model, model_config)
    assert digest(model.a.data) == digest(ref["a"])
    assert digest(model.b.data) == digest(ref["b"])


def test_missing_weights_raise_like_vllm(fake_vllm: dict[str, type], tmp_path: Path) -> None:
    from loader.engines.vllm import register

    _model_dir(tmp_path, with_b=False)
    register()
    inst = fake_vllm["tierfs"](types.SimpleNamespace(model_loader_extra_config=None))
    with pytest.raises(ValueError, match="not initialized"):
        inst.load_weights(
            TinyModel(), types.SimpleNamespace(model=str(tmp_path), quantization=None)
        )


def test_register_without_vllm_is_a_logged_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import loader.engines.vllm as plugin

    monkeypatch.setattr(plugin, "_registered", {})
    monkeypatch.setitem(sys.modules, "vllm", None)
    plugin.register()
    assert "not registered" in caplog.text


def test_sglang_iterator_patch(tmp_path: Path) -> None:
    from loader.engines import sglang

    ref = _model_dir(tmp_path)
    fake = types.ModuleType("sglang.srt.model_loader.loader")
    sglang.install(fake)
    it = fake.safetensors_weights_iterator([str(tmp_path / "model.safetensors")], False)
    got = dict(it)
    assert {k: digest(v) for k, v in got.items()} == {k: digest(v) for k, v in ref.items()}


def test_checkpoint_paths_prefers_index(tmp_path: Path) -> None:
    _model_dir(tmp_path)
    assert checkpoint_paths(str(tmp_path)) == [str(tmp_path / "model.safetensors")]
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    assert checkpoint_paths(str(tmp_path)) == str(tmp_path / "model.safetensors.index.json")


def _hub_cache(root: Path, repo: str, commit: str) -> dict[str, torch.Tensor]:
    """A Hugging Face hub cache holding ``repo`` at ``commit`` (= refs/main), as the hub's
    own client lays it out: blobs by etag, snapshot symlinks into them."""
    ref = {"a": torch.randn(4, 8), "b": torch.randn(3)}
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(ref, str(repo_dir / "blobs" / "etag-weights"))
    (repo_dir / "blobs" / "etag-config").write_text('{"model_type": "tiny"}')
    (snapshot / "model.safetensors").symlink_to("../../blobs/etag-weights")
    (snapshot / "config.json").symlink_to("../../blobs/etag-config")
    return ref


def test_vllm_repo_id_resolves_through_the_hub_cache(
    fake_vllm: dict[str, type], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from loader.engines.vllm import register

    commit = "0123456789abcdef0123456789abcdef01234567"
    ref = _hub_cache(tmp_path / "hub", "org/tiny", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    register()
    inst = fake_vllm["tierfs"](types.SimpleNamespace(model_loader_extra_config=None))
    for revision in (None, "main", commit):
        model_config = types.SimpleNamespace(model="org/tiny", revision=revision, quantization=None)
        inst.download_model(model_config)
        model = TinyModel()
        inst.load_weights(model, model_config)
        assert digest(model.a.data) == digest(ref["a"])
        assert digest(model.b.data) == digest(ref["b"])


def test_uncached_repo_id_is_an_error_naming_the_repo_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from loader import CheckpointError

    _hub_cache(tmp_path / "hub", "org/tiny", "0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"org/other.*Hugging Face cache .*hub"):
        checkpoint_paths("org/other")
    with pytest.raises(CheckpointError, match=r"org/tiny.*revision 'v2'"):
        checkpoint_paths("org/tiny", "v2")
    with pytest.raises(CheckpointError, match="not a local model directory or a repo id"):
        checkpoint_paths(str(tmp_path / "no" / "such" / "dir"))
