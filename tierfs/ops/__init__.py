"""Operations around the mount: fsck and repair, logging set-up, the install command and
the demo store builder. May import the namespace, storage and the shared modules at the
package root; never the FUSE boundary, the daemon or the control plane.
"""
