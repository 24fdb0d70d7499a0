"""The mover driven in-process (tests/integration/stack.py): no mount, real catalog."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.integration.stack import read_file, running_stack, stack_config
from tierfs.control.status import offline_report
from tierfs.storage.events import FileOpened


def test_a_model_that_vanishes_before_its_promotion_on_open_leaves_the_mover_running(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path)
    model = tmp_path / "cold" / "m"
    model.mkdir()
    (model / "a.safetensors").write_bytes(b"x" * 4096)
    (tmp_path / "cold" / "other").mkdir()
    (tmp_path / "cold" / "other" / "b.safetensors").write_bytes(b"y" * 4096)

    async def main() -> None:
        async with running_stack(config) as stack:
            node = stack.namespace.resolve("m/a.safetensors")
            assert [m.name for m in (await stack.mover.inventory()).models] == [
                "m/a.safetensors",
                "other/b.safetensors",
            ]
            # Gone between the open and the promotion it starts.
            shutil.rmtree(model)
            stack.namespace.refresh()
            stack.placement.events.hint(FileOpened(node))
            await trio.testing.wait_all_tasks_blocked()
            assert stack.mover.jobs() == []
            # Still serving: a later request is answered.
            job = await stack.mover.promote("other/b.safetensors", reason="command")
            await job.ended.wait()
            assert str(job.state) == "done", job.error

    trio.run(main)


def test_status_shows_an_open_at_once_before_it_reaches_the_catalog(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    (tmp_path / "cold" / "m").mkdir()
    (tmp_path / "cold" / "m" / "a.safetensors").write_bytes(b"x" * 4096)

    async def main() -> None:
        async with running_stack(config) as stack:
            before = await stack.control.status()
            assert [m["last_access"] for m in before["models"]] == [None]
            opened_at = time.time()
            await read_file(stack, "m/a.safetensors")
            # Nothing flushed: the catalog has no access yet.
            assert stack.catalog.files()[0].last_access is None
            after = await stack.control.status()
            (model,) = after["models"]
            assert model["last_access"] is not None and model["last_access"] >= opened_at

    trio.run(main)


def test_a_metrics_scrape_reads_the_catalog_off_the_trio_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = stack_config(tmp_path)
    (tmp_path / "cold" / "m").mkdir()
    (tmp_path / "cold" / "m" / "a.safetensors").write_bytes(b"x" * 4096)
    threads: list[threading.Thread] = []

    async def main() -> None:
        async with running_stack(config) as stack:
            usage = stack.catalog.tier_usage

            def watched() -> dict[str, int]:
                threads.append(threading.current_thread())
                return usage()

            monkeypatch.setattr(stack.catalog, "tier_usage", watched)
            job = await stack.mover.promote("m/a.safetensors", reason="command")
            await job.ended.wait()
            metrics = await stack.control.metrics()
            assert metrics["tierfs_tier_used_bytes"][2] == [({"tier": "ram0"}, 4096)]

    trio.run(main)
    assert threads and threading.main_thread() not in threads


def test_concurrent_scrapes_read_the_catalog_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = stack_config(tmp_path)
    (tmp_path / "cold" / "m").mkdir()
    (tmp_path / "cold" / "m" / "a.safetensors").write_bytes(b"x" * 4096)
    inside = 0
    most = 0
    lock = threading.Lock()

    async def main() -> None:
        async with running_stack(config) as stack:
            usage = stack.catalog.tier_usage

            def slow() -> dict[str, int]:
                nonlocal inside, most
                with lock:
                    inside += 1
                    most = max(most, inside)
                # Long enough that unbounded worker threads would overlap.
                time.sleep(0.05)
                with lock:
                    inside -= 1
                return usage()

            monkeypatch.setattr(stack.catalog, "tier_usage", slow)
            control = stack.control
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(control.metrics)

    trio.run(main)
    assert most == 1


def test_status_without_a_mount_shows_the_last_access_the_catalog_recorded(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path)
    for name in ("m", "other"):
        (tmp_path / "cold" / name).mkdir()
        (tmp_path / "cold" / name / "a.safetensors").write_bytes(b"x" * 4096)
    opened_at = time.time()

    async def main() -> None:
        async with running_stack(config) as stack:
            await read_file(stack, "m/a.safetensors")
            await stack.placement.flush_access()

    trio.run(main)
    report = offline_report(config)
    accessed = {m["name"]: m["last_access"] for m in report["models"]}
    assert accessed["other/a.safetensors"] is None
    assert accessed["m/a.safetensors"] is not None and accessed["m/a.safetensors"] >= opened_at
