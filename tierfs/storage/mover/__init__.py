"""The mover: promotions, demotions and eviction of models, by command or by policy.

`core.Mover` is the public face (promote, demote, pin, unpin, jobs, job). Behind it:
`jobs` (jobs and their JSON), `promotion` (placement strategies, claiming and copying),
`eviction` (space arithmetic, demotion, fill-first moves down a tier), `transfer` (one
verified copy onto a tier), `pins`, `policy` (promote on open) and `context` (what
they share).
"""

from tierfs.storage.mover.core import Mover
from tierfs.storage.mover.jobs import Job

__all__ = ["Job", "Mover"]
