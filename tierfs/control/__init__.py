"""The control plane: the HTTP API on the owner-only socket, its client, the status
report and the command line. Sits on top: nothing below imports it.
"""
