"""Storage: where hot copies live and how they get there.

Owns the catalog (SQLite, the source of truth), the RAM tiers, the verified copier and
its I/O buffers, the placement registry that says which copy serves, and the mover that
promotes and demotes models. May import `tierfs.namespace` and the shared modules at the
package root; never the FUSE boundary, the daemon or the control plane.
"""
