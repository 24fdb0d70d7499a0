"""The ``tierfs`` command line.

User errors print one line and exit non-zero (2 for a bad config or usage), never a
traceback. Everything that decides anything lives in the layers below; these modules only
parse arguments and render results. One module per group of commands; importing it
registers its commands on `app`.
"""

from tierfs.control.cli import gui, health, models, mount, pool, report
from tierfs.control.cli.app import app

__all__ = ["app", "gui", "health", "main", "models", "mount", "pool", "report"]


def main() -> None:
    """Run the command line (the ``tierfs`` console script)."""
    app()
