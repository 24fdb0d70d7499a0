"""Storage: where hot copies live and how they get there.

Owns the catalog (SQLite, the source of truth; `records` holds its row types), the RAM
tiers, the verified copier and its I/O buffers, `backing` (which bytes serve a file),
the replica registry (`placement`), the events it publishes (`events`) and the mover
that promotes and demotes models (`mover`, a package). May import `tierfs.namespace` and
the shared modules at the package root; never the FUSE boundary, the daemon or the
control plane.

Who changes what:

- Only the registry changes which copy serves new opens: `serve` once the catalog calls a
  copy ``hot``, `withdraw` before any copy is deleted, `withdraw_stale` for a copy whose
  bytes were found wrong (fsck), `load` to re-read the catalog.
- Events flow up through one published interface, `placement.events`
  (`events.StorageEvents`): typed events on trio memory channels. The registry publishes
  `FileOpened` (a hint, dropped if a subscriber lags), `ColdChanged` and
  `CopyWithdrawn`. The mover subscribes to the first two and handles them in its own
  task (promotion on open; deleting a changed file's copies); the FUSE operations
  subscribe to `CopyWithdrawn` (the kernel's cached pages of it must go). Nobody plants a
  callback into another object. `events.settled()` waits until the subscribers have
  handled what was published before it: the request that found a changed cold file is
  answered once its copies are deleted, and fsck once stale pages are forgotten.
"""
