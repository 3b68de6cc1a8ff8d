"""A descriptor that another thread can make readable, to wake a loop sleeping in its poller.

Linux's eventfd where Python has it (one descriptor), otherwise a pipe, and on
Windows, where select() watches sockets only, a connected socket pair.  The
loop watches ``fileno()`` for reading; ``wake()`` may be called from any
thread, as often as it likes (a full pipe is already readable, so a write that
would block is dropped); ``drain()`` empties it in the loop's thread.

``wake()`` and ``close()`` hold a lock: once closed, the descriptor's number
may be reused by a socket, which a late ``wake()`` must never write to.
"""

import os
import socket
import threading
import weakref
from typing import Callable, Optional

__all__ = ["Waker"]

# Every open waker, so that a forked child can replace their locks.
_wakers: "weakref.WeakSet[Waker]" = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    # A lock held by one of the parent's threads at fork() would be held for
    # ever here, and close() (run by the event loop's own fork hook) waits
    # for it.
    for waker in list(_wakers):
        waker._lock = threading.Lock()


class Waker:
    """One wake-up descriptor (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: Optional[tuple[socket.socket, socket.socket]] = None
        self._write_fd = -1
        self._read_fd: int
        if hasattr(os, "eventfd"):
            self._read_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._write_fd = self._read_fd
            self._signal: Callable[[], None] = self._signal_eventfd
            self._drain: Callable[[], None] = self._drain_eventfd
        elif os.name == "posix":
            self._read_fd, self._write_fd = os.pipe()  # not inherited by children (PEP 446)
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
            self._signal = self._signal_pipe
            self._drain = self._drain_pipe
        else:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._sockets = (reader, writer)
            self._read_fd = reader.fileno()
            self._signal = self._signal_socket
            self._drain = self._drain_socket
        _wakers.add(self)

    def fileno(self) -> int:
        """The descriptor to watch for reading (-1 once closed)."""
        return self._read_fd

    def wake(self) -> None:
        """Make ``fileno()`` readable; safe from any thread, a no-op once closed."""
        with self._lock:
            if self._read_fd < 0:
                return
            try:
                self._signal()
            except OSError:
                pass  # full (already readable), or the other end went away

    def drain(self) -> None:
        """Read every pending wake-up, so the descriptor is no longer readable."""
        try:
            self._drain()
        except OSError:
            pass  # nothing pending (EAGAIN), or closed by a fork hook meanwhile

    def close(self) -> None:
        """Close the descriptor(s); later ``wake()`` calls do nothing."""
        with self._lock:
            if self._read_fd < 0:
                return
            if self._sockets is not None:
                for end in self._sockets:
                    end.close()
            else:
                os.close(self._read_fd)
                if self._write_fd != self._read_fd:
                    os.close(self._write_fd)
            self._read_fd = self._write_fd = -1
        _wakers.discard(self)

    def _signal_eventfd(self) -> None:
        os.eventfd_write(self._write_fd, 1)

    def _drain_eventfd(self) -> None:
        os.eventfd_read(self._read_fd)

    def _signal_pipe(self) -> None:
        os.write(self._write_fd, b"\0")

    def _drain_pipe(self) -> None:
        while len(os.read(self._read_fd, 4096)) == 4096:
            pass

    def _signal_socket(self) -> None:
        assert self._sockets is not None
        self._sockets[1].send(b"\0")

    def _drain_socket(self) -> None:
        assert self._sockets is not None
        while len(self._sockets[0].recv(4096)) == 4096:
            pass


if hasattr(os, "register_at_fork"):
    # Registered before chatcore.eventloop's own hook (which imports this
    # module first), so it runs first in the child.
    os.register_at_fork(after_in_child=_reset_locks_in_child)
