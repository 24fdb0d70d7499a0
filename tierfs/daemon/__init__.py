"""The daemon's life: the composition root.

Owns the state directory (`statedir`), the mountpoint's checks, recovery and unmounting
(`mounting`), the root nursery that owns every long-lived task (`service`), and starting
a daemon process and waiting until it serves (`spawn`).

The rule: `service.Daemon` wires every layer together, so this package may import all of
them, the control plane included (it serves the control API). Nothing in tierfs imports
the daemon except, lazily, the CLI commands that start, stop or stand in for one:
``tierfs mount`` and ``unmount``, and the offline ``fsck``, which holds the state
directory as a mount would. Tests and scripts start daemons through `spawn`.
"""
