"""The control plane: the HTTP API on the owner-only socket (`api`, `httpserve`), what
each request does to a running daemon (`service`), the Prometheus table (`metrics`), the
client, the status report and the command line (`cli`). Sits on top: nothing below
imports it. It drives the daemon's parts through `service.DaemonParts` and never
imports the daemon, save the CLI commands that start, stop or stand in for one (see
`tierfs.daemon`).
"""
