"""The FUSE boundary: kernel requests in, namespace and storage calls out.

Owns the pyfuse3 `Operations` (`operations`), the daemon-served read path (`readpath`)
and the kernel's passthrough backings (`passthrough`). Errors from below become
``FUSEError(errno)`` here and nowhere else. May import `tierfs.namespace`,
`tierfs.storage` and the shared modules at the package root; never the daemon or the
control plane.
"""
