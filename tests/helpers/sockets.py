"""Real sockets for the tests: connected pairs, a collecting peer, exact reads.

Every blocking call on a socket made here gives up after ``TIMEOUT``
seconds: a bound reached only when a test is already failing (the loop or
the peer stopped answering), never a measurement.  A channel made on one of
these sockets puts it in non-blocking mode, as ``dispatcher`` always does.
The ``sockets`` and ``socket_pair`` fixtures of conftest.py hand out
``Sockets``, so whatever a test opens is closed after it, failed or not.
"""

import socket
from typing import Optional, Union

#: Seconds a blocking call on a test socket may wait.  Only a failing test waits that long.
TIMEOUT = 10.0


def socket_pair(send_buffer: Optional[int] = None) -> tuple[socket.socket, socket.socket]:
    """A connected ``socket.socketpair()``; *send_buffer* sets the first end's SO_SNDBUF."""
    left, right = socket.socketpair()
    if send_buffer:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    for end in (left, right):
        end.settimeout(TIMEOUT)
    return left, right


def listener(backlog: int = 5) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (a free port); ``accept()`` times out."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
    sock.settimeout(TIMEOUT)
    return sock


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of a TCP connection over 127.0.0.1; the listener is closed."""
    with listener(1) as listening:
        client = socket.create_connection(listening.getsockname(), timeout=TIMEOUT)
        server, _ = listening.accept()
    server.settimeout(TIMEOUT)
    return server, client


class Sockets:
    """The sockets one test opens; ``close()`` closes every one (the fixtures call it)."""

    def __init__(self) -> None:
        self._opened: list[socket.socket] = []

    def track(self, sock: socket.socket) -> socket.socket:
        """Close *sock* with the rest; returns it."""
        self._opened.append(sock)
        return sock

    def pair(self, send_buffer: Optional[int] = None) -> tuple[socket.socket, socket.socket]:
        left, right = socket_pair(send_buffer)
        return self.track(left), self.track(right)

    def tcp_pair(self) -> tuple[socket.socket, socket.socket]:
        server, client = tcp_pair()
        return self.track(server), self.track(client)

    def listener(self) -> socket.socket:
        return self.track(listener())

    def close(self) -> None:
        for sock in self._opened:
            sock.close()
        self._opened.clear()


class Peer:
    """The far end of a channel's socket, non-blocking: ``pump()`` collects what has arrived.

    ``eof`` becomes True at the end of the stream, "reset" when the
    connection was reset.  ``serving.serve_until(..., peers=[peer])`` pumps
    it before every loop turn.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.received = bytearray()
        self.eof: Union[bool, str] = False

    def pump(self) -> None:
        while not self.eof:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.eof = "reset"
                return
            if not chunk:
                self.eof = True
                return
            self.received += chunk


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """*size* bytes from a blocking *sock*, or fewer if the stream ends first."""
    pieces = []
    while size:
        piece = sock.recv(min(size, 1 << 16))
        if not piece:
            break
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def receive_until_closed(sock: socket.socket) -> bytes:
    """Everything a blocking *sock* receives until the peer closes."""
    pieces = []
    while True:
        piece = sock.recv(1 << 16)
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
