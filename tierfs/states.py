"""The states a promotion job and a model report, as the API, the CLI and the GUI see them.

Stdlib only, so that the CLI can compare states without importing the mover.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a promotion job is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


class ModelState(StrEnum):
    """How much of a model is hot, as `tierfs status` reports it."""

    COLD = "cold"
    PARTIAL = "partial"
    HOT = "hot"
    PROMOTING = "promoting"


class PoolState(StrEnum):
    """Where a pool (a tier with a lifecycle at runtime) is."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    DISCONNECTING = "disconnecting"
    RESIZING = "resizing"
    FAILED = "failed"


class OperationState(StrEnum):
    """Where a pool operation (connect, disconnect, resize) is."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class StepState(StrEnum):
    """Where one step of a pool operation is."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
