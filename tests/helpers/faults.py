"""The faults both fault suites inject, with what stdlib 3.11 does about each, and failing producers.

test_faults.py injects them through fake sockets, test_faults_loopback.py
through real ones; the expectations are the same.
"""

import errno
from collections import deque
from collections.abc import Iterable

from .fakes import err

# errno -> what stdlib 3.11 does when recv() raises it: dispatcher.recv() turns
# _DISCONNECTED into handle_close(); async_chat.handle_read() ignores
# BlockingIOError and sends any other OSError to handle_error().  send() is
# handled alike: dispatcher.send() returns 0 on EWOULDBLOCK (== EAGAIN here)
# and calls handle_close() on _DISCONNECTED; async_chat.initiate_send() sends
# any other OSError (EINTR included) to handle_error().
IGNORED, CLOSED, ERROR = "ignored", "closed", "error"
RECV_FAULTS = {
    "EAGAIN": (errno.EAGAIN, IGNORED),
    "EWOULDBLOCK": (errno.EWOULDBLOCK, IGNORED),
    "EINTR": (errno.EINTR, ERROR),
    "ECONNRESET": (errno.ECONNRESET, CLOSED),
    "EPIPE": (errno.EPIPE, CLOSED),
    "ENOTCONN": (errno.ENOTCONN, CLOSED),
    "ESHUTDOWN": (errno.ESHUTDOWN, CLOSED),
    "ECONNABORTED": (errno.ECONNABORTED, CLOSED),
    "EBADF": (errno.EBADF, CLOSED),
    "ETIMEDOUT": (errno.ETIMEDOUT, ERROR),
}
SEND_FAULTS = RECV_FAULTS
#: errno -> the name of the OSError subclass raised for it (what handle_error sees).
EXCEPTION_NAMES = {code: type(err(code)).__name__ for code, _ in RECV_FAULTS.values()}

#: (fault, what handle_error does): "keep" only where handle_error is called.
FAULT_CASES = [(fault, "close") for fault in sorted(RECV_FAULTS)] + [
    (fault, "keep") for fault in sorted(RECV_FAULTS) if RECV_FAULTS[fault][1] == ERROR
]


class ChunkProducer:
    """A custom producer: its chunks (bytes or bytearray), then b""."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = deque(chunks)

    def more(self) -> bytes:
        return self.chunks.popleft() if self.chunks else b""


class ProducerBug(Exception):
    """What ``FailingProducer.more()`` raises."""


class FailingProducer:
    """Returns its chunks, then raises ``ProducerBug`` from more() every time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = deque(chunks)
        self.calls = 0

    def more(self) -> bytes:
        self.calls += 1
        if self.chunks:
            return self.chunks.popleft()
        raise ProducerBug("more() failed")
