"""A pool operation and its steps, as the API, the CLI and the GUI follow them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from tierfs.states import OperationState, StepState

#: One step's work: returns a line saying what it did (or found already done).
StepFn = Callable[[], Awaitable[str]]


@dataclass
class Step:
    """One idempotent step of an operation."""

    name: str
    run: StepFn
    state: StepState = StepState.PENDING
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": str(self.state), "detail": self.detail}


@dataclass
class Operation:
    """A connect, disconnect or resize of one pool, in flight or finished."""

    id: int
    pool: str
    action: str
    steps: list[Step]
    state: OperationState = OperationState.RUNNING
    error: str | None = None
    ended: trio.Event = field(default_factory=trio.Event)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pool": self.pool,
            "action": self.action,
            "state": str(self.state),
            "steps": [s.to_json() for s in self.steps],
            "error": self.error,
        }
