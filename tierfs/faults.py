"""Named pause points, so tests can kill the daemon at exact moments.

Points: ``copy_started`` (temp file created, nothing written), ``copy_written`` (temp
written and verified), ``copy_verified`` (made read-only, not yet renamed),
``copy_renamed`` (renamed, not yet hot in the catalog), ``evict_marked`` (catalog says
evicting, file not yet removed), ``backing_open`` (an open has chosen its copy and is about
to open it), ``fsck_checking`` (an online fsck is about to read the catalog),
``pool_<action>_<step>`` (a pool operation recorded that step as done, e.g.
``pool_disconnect_demote``).

Set ``TIERFS_FAULT_PAUSE=copy_written,evict_marked`` and the daemon logs
``fault point <name> reached`` and stops there (for ``TIERFS_FAULT_PAUSE_S`` seconds,
default an hour). A test waits for the line, then sends SIGKILL. Unset, each point costs
one dict lookup.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

_POINTS = frozenset(p for p in os.environ.get("TIERFS_FAULT_PAUSE", "").split(",") if p)
_PAUSE_S = float(os.environ.get("TIERFS_FAULT_PAUSE_S", "3600"))


def pause_point(name: str) -> None:
    """Stop here if the environment asks for it. Only call from worker threads."""
    if name in _POINTS:
        log.warning("fault point %s reached; pausing %.0fs", name, _PAUSE_S)
        time.sleep(_PAUSE_S)
