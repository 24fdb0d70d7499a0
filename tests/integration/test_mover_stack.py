"""The mover driven in-process (tests/integration/stack.py): no mount, real catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio
import trio.testing

from tests.integration.stack import running_stack, stack_config


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
            stack.mover.note_open(node)
            await trio.testing.wait_all_tasks_blocked()
            assert stack.mover.jobs() == []
            # Still serving: a later request is answered.
            job = await stack.mover.promote("other/b.safetensors", reason="command")
            await job.ended.wait()
            assert str(job.state) == "done", job.error

    trio.run(main)

