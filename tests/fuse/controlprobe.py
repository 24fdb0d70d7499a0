"""Raw HTTP over the control socket, for clients that misbehave on purpose.

httpx cannot send a truncated body, garbage, or hang up mid-request; these helpers can.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

# Long enough for any honest answer on a busy CI machine; a hang is far longer.
ANSWER_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def connect(sock_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_TIMEOUT_S)
    sock.connect(str(sock_path))
    return sock


def request_bytes(method: str, path: str, body: bytes, length: int | None = None) -> bytes:
    """An HTTP/1.1 request; `length` overrides the Content-Length header (to lie in it)."""
    declared = len(body) if length is None else length
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: tierfs\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def exchange(sock_path: Path, raw: bytes) -> Answer:
    """Send a complete request and read the whole answer (the server closes after it).

    Raises:
        TimeoutError: no complete answer within ANSWER_TIMEOUT_S: a hang.
    """
    with connect(sock_path) as sock:
        sock.sendall(raw)
        data = bytearray()
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while chunk := sock.recv(1 << 16):
            data += chunk
            if time.monotonic() > deadline:
                raise TimeoutError("the answer never ended")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(status, headers.get("content-type", ""), body)


def hang_up(sock_path: Path, raw: bytes, *, pause: float = 0.0) -> None:
    """Send part of a request (optionally slowly), then close without reading."""
    with connect(sock_path) as sock:
        try:
            if pause:
                for i in range(0, len(raw), 7):
                    sock.sendall(raw[i : i + 7])
                    time.sleep(pause)
            else:
                sock.sendall(raw)
        except OSError:
            pass  # the server may close first; that is its right


def json_of(answer: Answer) -> dict[str, object]:
    assert answer.content_type.startswith("application/json"), answer
    return dict(json.loads(answer.body))
