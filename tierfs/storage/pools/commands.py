"""Running the commands of a pool's steps, here or on a remote host over ssh.

Every external command goes through a `Runner`, so that tests can record the exact argv
of the commands this kernel cannot run (``nvme``) and run the rest for real.
"""

from __future__ import annotations

import errno
import logging
import shlex
import subprocess
from dataclasses import dataclass
from typing import Protocol

from tierfs.errors import PoolError

log = logging.getLogger(__name__)

# ssh's own exit status for "could not connect or authenticate".
SSH_FAILED = 255
COMMAND_TIMEOUT_S = 120.0


class Runner(Protocol):
    """Runs one command and returns its stdout, or raises naming what failed."""

    def __call__(self, argv: list[str], *, check: bool = True) -> Result: ...


@dataclass(frozen=True)
class Result:
    """What a command printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str

    def said(self) -> str:
        """Its last line of output, which names what went wrong when it failed."""
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {self.returncode}"


def run_command(argv: list[str], *, check: bool = True) -> Result:
    """Run `argv` here (a blocking call: the caller is in a worker thread).

    Raises:
        PoolError: the program is not installed, timed out, or (with `check`) failed.
    """
    log.debug("running %s", shlex.join(argv))
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise PoolError(
            f"{argv[0]} is not installed (needed to run: {_shown(argv)})", errno=errno.ENOENT
        ) from None
    except subprocess.TimeoutExpired:
        raise PoolError(
            f"{argv[0]} did not finish in {COMMAND_TIMEOUT_S:.0f}s", errno=errno.ETIMEDOUT
        ) from None
    result = Result(done.returncode, done.stdout, done.stderr)
    if check and done.returncode != 0:
        raise command_failed(argv, result)
    return result


def command_failed(argv: list[str], result: Result) -> PoolError:
    """The one-line error for a command that exited non-zero."""
    return PoolError(f"{_shown(argv)}: {result.said()}", errno=errno.EIO)


def _shown(argv: list[str]) -> str:
    # A command line as an error names it: an ssh command carries a whole script.
    text = shlex.join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


class RemoteShell:
    """Runs shell scripts on a remote host with ssh, through a `Runner`.

    Args:
        runner: runs the local ``ssh`` command.
        destination: ``user@host``.
        options: extra ssh arguments (identity, known hosts, port).
    """

    def __init__(self, runner: Runner, destination: str, options: list[str]) -> None:
        self.runner = runner
        self.destination = destination
        self.options = options

    def argv(self, script: str) -> list[str]:
        # BatchMode: a missing key fails at once instead of prompting the daemon for one.
        return [
            "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *self.options,
            self.destination, "--", script,
        ]  # fmt: skip

    def run(self, script: str) -> str:
        """Run `script` with the remote user's shell; returns its stdout.

        Raises:
            PoolError: ssh is missing, the host cannot be reached, or the script failed.
        """
        argv = self.argv(script)
        result = self.runner(argv, check=False)
        if result.returncode == SSH_FAILED:
            raise PoolError(
                f"cannot reach {self.destination} over ssh: {result.said()}",
                errno=errno.EHOSTUNREACH,
            )
        if result.returncode != 0:
            raise PoolError(f"on {self.destination}: {result.said()}", errno=errno.EIO)
        return result.stdout
