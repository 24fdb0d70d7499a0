"""The CUDA staging path (pinned ring, H2D pieces, events recycling buffers, hashing before
the copy) and the gds device-direct path, exercised on CPU: torch.cuda's stream/event API and
kvikio's CuFile are replaced by stand-ins, so the pipeline's bookkeeping runs here; the real
device paths are covered by the ``gpu`` tests."""

from __future__ import annotations

import contextlib
import os
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

import loader
from loader.memory import BufferPool, HostBuffer, tensor_bytes
from loader.pipeline import Pipeline
from loader.plan import FileSpec, build_plan
from tests.loader_testutil import all_dtypes, digest, random_tensor, write_raw


class FakeEvent:
    created: list[FakeEvent] = []

    def __init__(self) -> None:
        self.polls = 0
        self.synced = False
        FakeEvent.created.append(self)

    def record(self, stream: Any = None) -> None:
        self.polls = 0

    def query(self) -> bool:
        # Not complete on the first poll: the pool must skip a buffer whose copy is pending.
        self.polls += 1
        return self.polls > 1

    def synchronize(self) -> None:
        self.synced = True


class FakeStream:
    def __init__(self) -> None:
        self.waited: list[FakeEvent] = []
        self.waited_on: list[FakeStream] = []

    def wait_event(self, ev: FakeEvent) -> None:
        self.waited.append(ev)

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeStream:
    consumer = FakeStream()
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    FakeEvent.created = []
    return consumer


@pytest.mark.parametrize("verify", [False, True])
def test_staging_ring_path(tmp_path: Path, fake_cuda: FakeStream, verify: bool) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = [(f"t{i}", random_tensor(dt, (31, 17), g)) for i, dt in enumerate(all_dtypes())]
    tensors += [("big", random_tensor(torch.bfloat16, (700, 1000), g)), ("e", torch.empty(0))]
    tensors += [(f"tiny{i}", random_tensor(torch.int8, (i,), g)) for i in range(200)]
    p = tmp_path / "s.safetensors"
    write_raw(p, tensors)
    copy_stream = FakeStream()
    with loader.safe_open(p, backend="buffered") as f:
        of = f.files[0]
        of.rf.xxh3 = xxhash.xxh3_128_hexdigest(p.read_bytes())
        chunk = 128 * 1024
        plan = build_plan([FileSpec(of.header, chunk, None)])  # as on CUDA: no own buffers
        cap = 4 * chunk
        pool = BufferPool(cap, lambda n: HostBuffer(n))
        with ThreadPoolExecutor(3) as ex:
            pipe = Pipeline(
                f.files,
                plan,
                device=torch.device("cpu"),
                copy=True,
                executor=ex,
                pool=pool,
                window=4,
                verify=verify,
                copy_stream=copy_stream,
            )
            pipe.cpu = False  # take the device branch: H2D pieces, events, pool recycling
            pipe._scatter_in_worker = False
            got = {k: digest(v) for k, v in pipe}
    assert got == {k: digest(v) for k, v in tensors}
    assert pool.peak <= cap  # host memory bounded by the staging size
    assert FakeEvent.created and fake_cuda.waited  # consumer waited on copy events
    # The copy stream waited for the consumer's queued work before writing its destinations.
    assert copy_stream.waited_on and all(s is fake_cuda for s in copy_stream.waited_on)
    assert len(plan.requests) > 4  # the ring really was recycled


def _pipeline(
    f: Any, plan: Any, ex: ThreadPoolExecutor, copy_stream: FakeStream, verify: bool
) -> Pipeline:
    """A CPU-device pipeline over ``f``'s files with a 1 MiB pool and two reads in flight."""
    return Pipeline(
        f.files,
        plan,
        device=torch.device("cpu"),
        copy=True,
        executor=ex,
        pool=BufferPool(1 << 20, lambda n: HostBuffer(n)),
        window=2,
        verify=verify,
        copy_stream=copy_stream,
    )


def test_staging_ring_detects_mismatch(tmp_path: Path, fake_cuda: FakeStream) -> None:
    p = tmp_path / "s.safetensors"
    write_raw(p, [("a", torch.arange(100000, dtype=torch.float32))])
    with loader.safe_open(p, backend="buffered") as f:
        f.files[0].rf.xxh3 = "0" * 32
        plan = build_plan([FileSpec(f.files[0].header, 64 * 1024, None)])
        with ThreadPoolExecutor(2) as ex:
            pipe = _pipeline(f, plan, ex, FakeStream(), verify=True)
            pipe.cpu = False
            pipe._scatter_in_worker = False
            with pytest.raises(loader.IntegrityError, match=r"s\.safetensors"):
                list(pipe)


class PreadCuFile:
    """Stands in for kvikio's ``CuFile``: ``pread`` into the destination from a worker
    thread, returning a handle with ``get()``; the read of a tensor of ``short_numel``
    elements comes up one byte short."""

    def __init__(self, fd: int, ex: ThreadPoolExecutor, short_numel: int | None = None) -> None:
        self.fd, self.ex, self.short_numel = fd, ex, short_numel
        self.targets: list[int] = []

    def read_device(self, dst: torch.Tensor, offset: int) -> Any:
        self.targets.append(dst.data_ptr())
        view = tensor_bytes(dst.reshape(-1))
        if dst.numel() == self.short_numel:
            view = view[:-1]
        fut = self.ex.submit(os.preadv, self.fd, [view], offset)
        return types.SimpleNamespace(get=fut.result)

    def close(self) -> None:
        """The resolved fd belongs to the session, which closes it."""


def _device_pipeline(
    f: Any, ex: ThreadPoolExecutor, copy_stream: FakeStream, verify: bool
) -> Pipeline:
    plan = build_plan([FileSpec(f.files[0].header, 1 << 20, None, "device")])
    return _pipeline(f, plan, ex, copy_stream, verify)


@pytest.mark.parametrize("verify", [False, True])
def test_device_direct_path(
    tmp_path: Path, fake_cuda: FakeStream, monkeypatch: pytest.MonkeyPatch, verify: bool
) -> None:
    """The gds path's bookkeeping: destinations allocated under the copy stream and marked
    as used by the consumer's, reads submitted ahead, completed in order, hashed."""
    allocated_under: list[bool] = []
    inside = {"copy": False}

    class TrackingStream(FakeStream):
        def __enter__(self) -> None:
            inside["copy"] = True

        def __exit__(self, *exc: object) -> None:
            inside["copy"] = False

    copy_stream = TrackingStream()
    monkeypatch.setattr(torch.cuda, "stream", lambda s: s)
    real_empty = torch.empty

    def tracking_empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        allocated_under.append(inside["copy"])
        return real_empty(*args, **kwargs)

    recorded: list[object] = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: recorded.append(s))
    g = torch.Generator().manual_seed(5)
    tensors = [(f"t{i}", random_tensor(torch.bfloat16, (37, 29 + i), g)) for i in range(40)]
    tensors += [("odd", random_tensor(torch.int8, (1000,), g))]
    p = tmp_path / "d.safetensors"
    write_raw(p, tensors)
    with loader.safe_open(p, backend="buffered") as f, ThreadPoolExecutor(3) as ex:
        f.files[0].rf.xxh3 = xxhash.xxh3_128_hexdigest(p.read_bytes())
        fake_file = PreadCuFile(f.files[0].rf.fd, ex)
        f.files[0].bf = fake_file  # type: ignore[assignment]
        pipe = _device_pipeline(f, ex, copy_stream, verify)
        monkeypatch.setattr(torch, "empty", tracking_empty)
        got = {k: digest(v) for k, v in pipe}
    assert got == {k: digest(v) for k, v in tensors}
    assert len(fake_file.targets) == len(tensors)
    assert allocated_under and all(allocated_under), "a destination came from another pool"
    assert len(recorded) == len(tensors) and all(s is fake_cuda for s in recorded)


def test_device_direct_short_read_names_the_tensor(tmp_path: Path, fake_cuda: FakeStream) -> None:
    p = tmp_path / "d.safetensors"
    write_raw(p, [("fine", torch.ones(64)), ("cut", torch.ones(1000, dtype=torch.int8))])
    with loader.safe_open(p, backend="buffered") as f, ThreadPoolExecutor(2) as ex:
        f.files[0].bf = PreadCuFile(f.files[0].rf.fd, ex, short_numel=1000)  # type: ignore[assignment]
        pipe = _device_pipeline(f, ex, FakeStream(), verify=False)
        with pytest.raises(loader.LoaderIOError, match=r"short device read of 'cut': 999 of 1000"):
            list(pipe)
