"""How the loop hands an event to a channel: asyncore's ``read``/``write``/``readwrite``.

The lowest layer of the asyncore side: poll(2) flag values, the errno values
that mean "the peer is gone", ``ExitNow``, and the functions that call one
event handler and turn its exceptions into ``handle_error()``/``handle_close()``
exactly as asyncore does.  It knows channels only by the methods it calls, so
the loop (``chatcore.eventloop``) and the dispatcher (``chatcore.dispatch``)
both build on it without depending on each other's classes.
"""

from errno import EBADF, ECONNABORTED, ECONNRESET, ENOTCONN, EPIPE, ESHUTDOWN
from typing import Any

__all__ = ["ExitNow", "read", "readwrite", "write"]

#: errno values that mean "the peer is gone": send/recv turn them into handle_close().
DISCONNECTED = frozenset({ECONNRESET, ENOTCONN, ESHUTDOWN, ECONNABORTED, EPIPE, EBADF})

# poll(2) bits, spelled out because Windows' select module lacks them.
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x001, 0x002, 0x004, 0x008, 0x010, 0x020


class ExitNow(Exception):
    """Raised by a handler to leave ``loop()``: it is never turned into handle_error()."""


# Exceptions that leave the loop instead of reaching handle_error().
_RERAISED = (ExitNow, KeyboardInterrupt, SystemExit)


# read/write/_exception each spell the call out rather than share a helper
# taking the handler's name: they run for every event, and the helper's frame
# and getattr() were a measurable part of a request/response turn.


def read(obj: Any) -> None:
    """Deliver a read event to *obj*; any exception but ExitNow & co. goes to handle_error()."""
    try:
        obj.handle_read_event()
    except _RERAISED:
        raise
    except BaseException:
        obj.handle_error()


def write(obj: Any) -> None:
    """Deliver a write event to *obj*, as ``read`` does."""
    try:
        obj.handle_write_event()
    except _RERAISED:
        raise
    except BaseException:
        obj.handle_error()


def _exception(obj: Any) -> None:
    try:
        obj.handle_expt_event()
    except _RERAISED:
        raise
    except BaseException:
        obj.handle_error()


def readwrite(obj: Any, flags: int) -> None:
    """Deliver poll(2)-style *flags*; a peer-gone OSError becomes handle_close()."""
    try:
        if flags & POLLIN:
            obj.handle_read_event()
        if flags & POLLOUT:
            obj.handle_write_event()
        if flags & POLLPRI:
            obj.handle_expt_event()
        if flags & (POLLHUP | POLLERR | POLLNVAL):
            obj.handle_close()
    except OSError as err:
        if err.errno in DISCONNECTED:
            obj.handle_close()
        else:
            obj.handle_error()
    except _RERAISED:
        raise
    except BaseException:
        obj.handle_error()
