"""Socket stand-ins for ``dispatcher``/``async_chat``, whose ``recv``/``send`` results are scripted.

A fake is not a ``socket.socket``, so chatcore takes the code paths stdlib
has (``recv()``, ``initiate_send()``/``send()``) rather than its fast paths
(``recv_into`` a shared buffer, gathered ``sendmsg``), which need real sockets
(see helpers.sockets).  Descriptor numbers count up from far above real
ones, so a fake never collides with a real socket in the same map.
"""

import errno
import itertools
import os
from collections import deque
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

_numbers = itertools.count(1_000_000)

#: One ``send()`` step: accept at most N bytes (int), let a function of the
#: offered size say how many, accept everything (None), or raise.
SendStep = Union[int, Callable[[int], int], None, BaseException]


def err(code: int) -> OSError:
    """A fresh OSError for errno *code* (the constructor picks the subclass, as the kernel's would)."""
    return OSError(code, os.strerror(code))


def sent_bytes(data: Any) -> bytes:
    """The bytes a socket's ``send(data)`` takes, in C order; BufferError where it cannot."""
    with memoryview(data) as view:
        if not view.c_contiguous:
            raise BufferError("a socket sends only C-contiguous buffers")
        return view.tobytes()


def send_step(behaviour: tuple) -> SendStep:
    """The ``SendStep`` a drawn behaviour stands for.

    ``("all",)``; ``("part", r)``: accept ``1 + r % offered`` bytes;
    ``("eagain",)``: BlockingIOError; ``("reset",)``: ECONNRESET.  Property
    tests draw these tuples, which read well in a falsifying example.
    """
    kind = behaviour[0]
    if kind == "eagain":
        return BlockingIOError(errno.EAGAIN, "scripted EAGAIN")
    if kind == "reset":
        return ConnectionResetError(errno.ECONNRESET, "scripted ECONNRESET")
    if kind == "part":
        remainder = behaviour[1]
        return lambda offered: 1 + remainder % offered if offered else 0
    assert kind == "all", behaviour
    return None


class FakeConnection:
    """What every fake shares: a connected, non-blocking peer with its own descriptor number."""

    def __init__(self, fd: Optional[int] = None) -> None:
        self._fd = next(_numbers) if fd is None else fd

    def fileno(self) -> int:
        return self._fd

    def setblocking(self, flag: bool) -> None:
        pass

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 4242)


class FakeSocket(FakeConnection):
    """A connected, non-blocking socket whose ``recv``/``send`` results are scripted.

    ``reads``: per ``recv()`` call, the bytes to return or an exception to
    raise; then EAGAIN.  ``sends``: per ``send()`` call, a ``SendStep``; then
    everything is accepted.  Both are deques a test may extend as it goes.
    ``sent`` holds every byte taken, ``send_sizes`` the bytes offered to each
    ``send()``.  After ``close()`` both calls raise EBADF, and
    ``used_after_close`` counts them.
    """

    def __init__(self, reads: Iterable[Any] = (), sends: Iterable[SendStep] = (), fd: Optional[int] = None) -> None:
        super().__init__(fd)
        self.reads: deque[Any] = deque(reads)
        self.sends: deque[SendStep] = deque(sends)
        self.sent = bytearray()
        self.send_sizes: list[int] = []
        self.closed = False
        self.sent_at_close: Optional[int] = None
        self.used_after_close = 0

    def recv(self, size: int) -> bytes:
        if self.closed:
            self.used_after_close += 1
            raise err(errno.EBADF)
        if not self.reads:
            raise BlockingIOError(errno.EAGAIN, "nothing scripted")
        item = self.reads.popleft()
        if isinstance(item, BaseException):
            raise item
        assert len(item) <= size, "test bug: scripted read larger than the buffer"
        return item

    def send(self, data: Any) -> int:
        if self.closed:
            self.used_after_close += 1
            raise err(errno.EBADF)
        offered = sent_bytes(data)
        self.send_sizes.append(len(offered))
        step = self.sends.popleft() if self.sends else None
        if isinstance(step, BaseException):
            raise step
        if step is None:
            count = len(offered)
        elif callable(step):
            count = step(len(offered))
        else:
            count = min(step, len(offered))
        self.sent += offered[:count]
        return count

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sent_at_close = len(self.sent)


class ScriptedListener:
    """A real listening socket whose ``accept()`` first raises the scripted errors.

    Its descriptor is real, so the loop watches it and a waiting connection
    makes it readable; ``accepts`` counts the calls.
    """

    def __init__(self, sock, failures=()):
        self._sock = sock
        self.failures = deque(failures)
        self.accepts = 0

    def accept(self):
        self.accepts += 1
        if self.failures:
            raise self.failures.popleft()
        return self._sock.accept()

    def __getattr__(self, name):
        return getattr(self._sock, name)
