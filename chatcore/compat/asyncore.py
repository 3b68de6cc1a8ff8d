"""chatcore as a drop-in ``asyncore`` module.

Module-level names match CPython 3.11's ``asyncore``.  The module's globals
are read when a function or method runs, as asyncore reads its own, so code
that swaps them keeps working: a new ``socket_map``, a mock ``socket`` module
that ``create_socket()`` then builds sockets from, a fake ``select`` or
``time`` that ``poll()``/``loop()`` then call as asyncore does (instead of
chatcore's kernel poller), an ``os`` whose ``name`` says "nt".  Dispatchers
print as ``<asyncore.dispatcher ...>``.
"""

import os
import select
import socket
import sys
import time
import warnings
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    ECONNRESET,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    ENOTCONN,
    EPIPE,
    ESHUTDOWN,
    EWOULDBLOCK,
    errorcode,
)
from typing import Any, Dict, Optional

from .. import dispatch as _core
from .. import eventloop as _loop
from ..dispatch import _strerror, compact_traceback
from ..events import (
    _RERAISED as _reraised_exceptions,
    DISCONNECTED as _DISCONNECTED,
    ExitNow,
    _exception,
    read,
    readwrite,
    write,
)

#: Shared with chatcore's own default map until a program assigns its own.
socket_map: Dict[int, Any] = _core.socket_map

# This module, whose globals (socket_map, socket, select, time, os, sys) the
# functions and classes below read when they run, as asyncore's do: tests
# replace them (``asyncore.socket = mock_socket``) and expect to be obeyed.
_this = sys.modules[__name__]


def _resolve(map: Optional[Dict[int, Any]]) -> Dict[int, Any]:
    return socket_map if map is None else map


def poll(timeout: Optional[float] = 0.0, map: Optional[Dict[int, Any]] = None) -> None:
    _loop.poll_once(timeout, _resolve(map), False, _this)


def poll2(timeout: Optional[float] = 0.0, map: Optional[Dict[int, Any]] = None) -> None:
    _loop.poll_once(timeout, _resolve(map), True, _this)


poll3 = poll2


def loop(
    timeout: Optional[float] = 30.0,
    use_poll: bool = False,
    map: Optional[Dict[int, Any]] = None,
    count: Optional[int] = None,
) -> None:
    _loop.run_loop(timeout, use_poll, _resolve(map), count, _this)


def close_all(map: Optional[Dict[int, Any]] = None, ignore_all: bool = False) -> None:
    _core.close_all(_resolve(map), ignore_all)


class dispatcher(_core.dispatcher):
    __module__ = "asyncore"
    __doc__ = _core.dispatcher.__doc__
    _namespace = _this

    @staticmethod
    def _default_map() -> Dict[int, Any]:
        return socket_map


class dispatcher_with_send(_core.dispatcher_with_send, dispatcher):
    __module__ = "asyncore"
    __doc__ = _core.dispatcher_with_send.__doc__


if os.name == "posix":

    class file_wrapper(_core.file_wrapper):
        __module__ = "asyncore"
        __doc__ = _core.file_wrapper.__doc__
        _namespace = _this

    class file_dispatcher(_core.file_dispatcher, dispatcher):
        __module__ = "asyncore"
        __doc__ = _core.file_dispatcher.__doc__
