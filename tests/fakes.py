"""The part every fake socket of the tests shares: a connected, non-blocking peer.

Each test module scripts ``recv``/``send`` its own way; what ``dispatcher``
needs besides (a unique descriptor number, ``setblocking``, ``getpeername``)
is written once here.  The numbers are far above real descriptors, so a fake
never collides with a socket in the same map.
"""

import itertools

_numbers = itertools.count(1_000_000)


class FakeConnection:
    """Base of the fake sockets: not a ``socket.socket``, so chatcore takes its ``recv()`` path."""

    def __init__(self) -> None:
        self._fd = next(_numbers)

    def fileno(self) -> int:
        return self._fd

    def setblocking(self, flag: bool) -> None:
        pass

    def getpeername(self):
        return ("127.0.0.1", 4242)
