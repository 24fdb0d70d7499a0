"""Promotion jobs: their progress, their JSON for status and the API, and their history."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from tierfs.states import JobState

# Finished jobs kept for `tierfs status` and the API; older ones are forgotten, so the
# history (and every status answer) stays small however long the mount runs.
JOB_HISTORY = 100


@dataclass
class Job:
    """A promotion in flight or finished, with its progress."""

    id: int
    model: str
    tier: str
    total: int
    reason: str
    state: JobState = JobState.QUEUED
    done: int = 0
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        """Count bytes copied (called from copy threads)."""
        with self._lock:
            self.done += n

    @property
    def active(self) -> bool:
        return self.state.active

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.active else None
        return {
            "id": self.id,
            "model": self.model,
            "tier": self.tier,
            "reason": self.reason,
            "state": str(self.state),
            "bytes_done": self.done,
            "bytes_total": self.total,
            "rate": rate,
            "eta_s": eta,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


class JobBook:
    """Every job of the mount by id, and the one running for each model."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self.active: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def start(self, model: str, tier: str, total: int, reason: str) -> Job:
        """A new job, running for `model` until `finish`."""
        job = Job(id=next(self._ids), model=model, tier=tier, total=total, reason=reason)
        self._jobs[job.id] = job
        self.active[model] = job
        return job

    def finish(self, job: Job) -> None:
        """A job ended (in any state): wake its waiters and trim the history."""
        job.finished = time.time()
        self.active.pop(job.model, None)
        job.ended.set()
        finished = [j.id for j in self._jobs.values() if not j.active]
        for job_id in sorted(finished)[:-JOB_HISTORY]:
            del self._jobs[job_id]

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.id)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)
