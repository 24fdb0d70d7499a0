"""Bitwise equality with safetensors for every backend, dtype, layout and ``paths`` form."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import loader
from loader.format import read_header
from tests.loader_testutil import all_dtypes, digest, random_tensor, write_raw

SHM = Path("/dev/shm")
BACKENDS = ["direct", "buffered", "mmap", None]
SMALL: dict[str, Any] = {"chunk_size": 64 * 1024, "threads": 3}


def _expected(tensors: list[tuple[str, torch.Tensor]]) -> dict[str, tuple[object, ...]]:
    return {n: digest(t) for n, t in tensors}


def _mixed_tensors() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out: list[tuple[str, torch.Tensor]] = []
    for i, dt in enumerate(all_dtypes()):
        out.append((f"odd{i}", random_tensor(dt, (7, 13, 3), g)))
        out.append((f"scalar{i}", random_tensor(dt, (), g)))
        out.append((f"empty{i}", random_tensor(dt, (0, 4), g)))
        # A single odd-sized byte tensor knocks every later offset off alignment.
        out.append((f"skew{i}", random_tensor(torch.uint8, (3,), g)))
    out.append(("cross", random_tensor(torch.float32, (300, 301), g)))  # spans many 64K chunks
    out.append(("big_bf16", random_tensor(torch.bfloat16, (1024, 1500), g)))  # an OWN tensor
    out.append(("tail", random_tensor(torch.int8, (4097,), g)))
    return out


@pytest.fixture(scope="module", params=["disk", "shm"])
def mixed_file(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, tuple[object, ...]]]]:
    base = tmp_path_factory.mktemp("mixed") if request.param == "disk" else SHM
    p = base / f"loader-test-mixed-{os.getpid()}.safetensors"
    tensors = _mixed_tensors()
    write_raw(p, tensors, metadata={"format": "pt", "note": "mixed"})
    yield p, _expected(tensors)
    p.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("copy", [True, False])
def test_every_dtype_and_layout(
    mixed_file: tuple[Path, dict[str, tuple[object, ...]]], backend: str | None, copy: bool
) -> None:
    path, expected = mixed_file
    got = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with loader.safe_open(path, backend=backend, copy=copy, **SMALL) as f:
            assert f.keys() == list(expected)
            assert f.metadata() == {"format": "pt", "note": "mixed"}
            for name, t in f.tensors():
                got[name] = digest(t)  # consumed before the next one arrives
            assert f.get_tensor("cross").shape == (300, 301)
            assert digest(f.get_tensor("big_bf16")) == expected["big_bf16"]
    assert got == expected


def test_matches_safetensors_load_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    names = [dt for dt in all_dtypes() if dt != torch.float8_e8m0fnu]
    d = {f"t{i}": random_tensor(dt, (5, 17), g) for i, dt in enumerate(names)}
    d["zero_d"] = torch.tensor(1.5)
    d["empty"] = torch.empty(0, 3)
    p = tmp_path / "st.safetensors"
    save_file(d, str(p))
    ref = st_load_file(str(p))
    for backend in BACKENDS:
        got = loader.load_file(p, backend=backend)
        assert {k: digest(v) for k, v in got.items()} == {k: digest(v) for k, v in ref.items()}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    d = tmp_path_factory.mktemp("sharded")
    g = torch.Generator().manual_seed(11)
    expected: dict[str, object] = {}
    weight_map = {}
    for s in range(3):
        shard = {}
        for i in range(3000 if s == 1 else 5):  # shard 2 holds thousands of tiny tensors
            shape = (3,) if s == 1 else (64 + i, 1000)
            shard[f"s{s}.w{i}"] = random_tensor(torch.bfloat16, shape, g)
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        save_file(shard, str(d / fname))
        expected.update({k: digest(v) for k, v in shard.items()})
        weight_map.update({k: fname for k in shard})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    return d, expected


@pytest.mark.parametrize("form", ["dir", "index", "list", "single"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_paths_forms(
    sharded: tuple[Path, dict[str, object]], form: str, backend: str | None
) -> None:
    d, expected = sharded
    files = sorted(str(p) for p in d.glob("*.safetensors"))
    paths: Any = {
        "dir": d,
        "index": d / "model.safetensors.index.json",
        "list": files,
        "single": files[1],
    }[form]
    got = {k: digest(v) for k, v in loader.load_file(paths, backend=backend, **SMALL).items()}
    if form == "single":
        expected = {k: v for k, v in expected.items() if k.startswith("s1.")}
    assert got == expected
    in_files = [
        t.name for f in (files if form != "single" else [files[1]]) for t in read_header(f).tensors
    ]
    assert list(got) == in_files  # file order across shards


def test_copy_false_buffer_reuse_warns_and_stays_correct(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    tensors = [(f"w{i}", random_tensor(torch.float32, (50_000,), g)) for i in range(40)]
    p = tmp_path / "reuse.safetensors"
    write_raw(p, tensors)
    expected = _expected(tensors)
    with loader.safe_open(
        p, backend="buffered", copy=False, chunk_size="256K", buffer_size="1M", threads=2
    ) as f:
        with pytest.warns(UserWarning, match="smaller than"):
            it = f.tensors()
            first_name, first = next(it)
        assert digest(first) == expected[first_name]
        ptrs = set()
        got = {first_name: digest(first)}
        for name, t in it:
            got[name] = digest(t)
            ptrs.add(t.untyped_storage().data_ptr())
    assert got == expected
    # 7.6 MiB went through a ~1 MiB buffer: the same memory was handed out again.
    assert len(ptrs) < len(tensors)


def test_copy_false_mmap_views_share_the_mapping() -> None:
    g = torch.Generator().manual_seed(9)
    tensors = [(f"w{i}", random_tensor(torch.float16, (1000, 100), g)) for i in range(5)]
    p = SHM / f"loader-test-views-{os.getpid()}.safetensors"
    write_raw(p, tensors, pad_header=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with loader.safe_open(p, copy=False) as f:
                assert f.backends[str(p)] == "mmap"
                mm = f.files[0].bf.view(0, 1)
                assert mm is not None
                base = torch.frombuffer(mm, dtype=torch.uint8).data_ptr()
                held = dict(f.tensors())  # views stay valid: the mapping is never reused
        for t in held.values():
            assert base <= t.data_ptr() < base + p.stat().st_size
        assert {k: digest(v) for k, v in held.items()} == _expected(tensors)
        # Private mapping: writing to a view does not touch the file.
        held["w0"].fill_(1)
        assert digest(loader.load_file(p)["w0"]) == _expected(tensors)["w0"]
    finally:
        p.unlink()


def test_copy_true_tensors_own_their_memory(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    tensors = [(f"w{i}", random_tensor(torch.float32, (300_000,), g)) for i in range(4)]
    tensors += [(f"b{i}", random_tensor(torch.float32, (10,), g)) for i in range(4)]
    p = tmp_path / "own.safetensors"
    write_raw(p, tensors)
    got = loader.load_file(p, backend="direct")
    storages = {v.untyped_storage().data_ptr() for v in got.values()}
    assert len(storages) == len(tensors)
    got["w0"].add_(1)
    assert digest(got["w1"]) == _expected(tensors)["w1"]


def test_unknown_backend_lists_valid_ones(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(3)}, str(p))
    with pytest.raises(loader.UnknownBackendError, match="direct, buffered, mmap, gds"):
        loader.safe_open(p, backend="turbo")


def test_env_var_and_fallback_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = SHM / f"loader-test-env-{os.getpid()}.safetensors"
    save_file({"a": torch.arange(10.0)}, str(p))
    try:
        monkeypatch.setenv("LOADER_BACKEND", "gds,buffered")
        with caplog.at_level(logging.WARNING), loader.safe_open(p) as f:
            assert f.backends[str(p)] == "buffered"  # gds needs a CUDA device
            assert torch.equal(f.get_tensor("a"), torch.arange(10.0))
        assert any("not CUDA" in r.message for r in caplog.records)
        monkeypatch.setenv("LOADER_BACKEND", "gds")
        with pytest.raises(loader.BackendUnavailableError, match="not CUDA"):
            loader.safe_open(p)
        # The argument wins over the environment.
        with loader.safe_open(p, backend="mmap") as f:
            assert f.backends[str(p)] == "mmap"
        monkeypatch.setenv("LOADER_BACKEND", "nope")
        with pytest.raises(loader.UnknownBackendError):
            loader.safe_open(p)
    finally:
        p.unlink()


def test_bad_file_named_in_error(tmp_path: Path) -> None:
    good = tmp_path / "a.safetensors"
    save_file({"a": torch.ones(2)}, str(good))
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(loader.SafetensorsFormatError, match=r"b\.safetensors"):
        loader.load_file([good, bad])
    with pytest.raises(loader.CheckpointError, match="also in"):
        loader.load_file([good, _copy(good, tmp_path / "c.safetensors")])


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_file_shrinking_mid_load_raises_io_error(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    p = tmp_path / "shrink.safetensors"
    write_raw(p, [("a", random_tensor(torch.float32, (200_000,), g))])
    with loader.safe_open(p, backend="buffered") as f:
        os.truncate(p, 4096)
        with pytest.raises(loader.LoaderIOError, match=r"shrink\.safetensors"):
            list(f.tensors())


def test_early_exit_releases_cleanly(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = [(f"w{i}", random_tensor(torch.float32, (100_000,), g)) for i in range(30)]
    p = tmp_path / "early.safetensors"
    write_raw(p, tensors)
    with loader.safe_open(p, **SMALL) as f:
        for i, (_name, _t) in enumerate(f.tensors()):
            if i == 3:
                break
        got = dict(f.tensors())
    assert {k: digest(v) for k, v in got.items()} == _expected(tensors)


def test_get_tensor_from_every_shard(sharded: tuple[Path, dict[str, object]]) -> None:
    d, expected = sharded
    for backend in BACKENDS:
        with loader.safe_open(d, backend=backend, **SMALL) as f:
            for name in ("s0.w4", "s1.w2999", "s2.w0", "s2.w3"):
                assert digest(f.get_tensor(name)) == expected[name]
            with pytest.raises(KeyError):
                f.get_tensor("missing")


def test_staging_memory_is_bounded(sharded: tuple[Path, dict[str, object]]) -> None:
    d, expected = sharded
    with loader.safe_open(
        d, backend="buffered", chunk_size="64K", threads=2, staging_size="512K"
    ) as f:
        got = {k: digest(v) for k, v in f.tensors()}
        assert f._pool is not None
        assert f._pool.peak <= 512 * 1024
    assert got == expected


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    layout=st.lists(
        st.tuples(
            st.sampled_from(all_dtypes()), st.lists(st.integers(0, 70), min_size=0, max_size=3)
        ),
        min_size=1,
        max_size=12,
    ),
    backend=st.sampled_from(["direct", "buffered", "mmap"]),
    copy=st.booleans(),
    pages=st.integers(16, 40),
    seed=st.integers(0, 2**16),
)
def test_random_layouts_round_trip(
    tmp_path: Path,
    layout: list[tuple[torch.dtype, list[int]]],
    backend: str,
    copy: bool,
    pages: int,
    seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = [
        (f"t{i}", random_tensor(dt, tuple(shape), g)) for i, (dt, shape) in enumerate(layout)
    ]
    p = tmp_path / f"r{seed}.safetensors"
    write_raw(p, tensors, pad_header=bool(seed % 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with loader.safe_open(
            p, backend=backend, copy=copy, chunk_size=pages * 4096, threads=2
        ) as f:
            got = {k: digest(v) for k, v in f.tensors()}
    assert got == _expected(tensors)
