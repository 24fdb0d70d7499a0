"""Logging for the daemon and the CLI: plain stderr, or journald's priority prefixes."""

from __future__ import annotations

import logging
import os
import sys

# sd-daemon(3) priority prefixes; journald strips them and records the level.
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """Prefix each line with ``<priority>``; journald adds its own timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """Whether stderr is connected to journald (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info") -> None:
    """Send tierfs's logs to stderr, or to journald under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO drowns tierfs's own lines.
    for noisy in ("hypercorn", "pyfuse3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
