"""chatcore as a drop-in ``asyncore`` module.

Module-level names match CPython 3.11's ``asyncore``; ``socket_map`` is read
when a function runs (as asyncore does), so code that swaps the module's map
keeps working; dispatchers print as ``<asyncore.dispatcher ...>``.
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
from ..dispatch import (
    _RERAISED as _reraised_exceptions,
    DISCONNECTED as _DISCONNECTED,
    ExitNow,
    _exception,
    _strerror,
    compact_traceback,
    read,
    readwrite,
    write,
)

#: Shared with chatcore's own default map until a program assigns its own.
socket_map: Dict[int, Any] = _core.socket_map


def _resolve(map: Optional[Dict[int, Any]]) -> Dict[int, Any]:
    return socket_map if map is None else map


def poll(timeout: Optional[float] = 0.0, map: Optional[Dict[int, Any]] = None) -> None:
    _loop.poll(timeout, _resolve(map))


def poll2(timeout: Optional[float] = 0.0, map: Optional[Dict[int, Any]] = None) -> None:
    _loop.poll2(timeout, _resolve(map))


poll3 = poll2


def loop(
    timeout: Optional[float] = 30.0,
    use_poll: bool = False,
    map: Optional[Dict[int, Any]] = None,
    count: Optional[int] = None,
) -> None:
    _loop.loop(timeout, use_poll, _resolve(map), count)


def close_all(map: Optional[Dict[int, Any]] = None, ignore_all: bool = False) -> None:
    _core.close_all(_resolve(map), ignore_all)


class dispatcher(_core.dispatcher):
    __module__ = "asyncore"
    __doc__ = _core.dispatcher.__doc__

    @staticmethod
    def _default_map() -> Dict[int, Any]:
        return socket_map


class dispatcher_with_send(_core.dispatcher_with_send, dispatcher):
    __module__ = "asyncore"
    __doc__ = _core.dispatcher_with_send.__doc__


if os.name == "posix":
    file_wrapper = _core.file_wrapper

    class file_dispatcher(_core.file_dispatcher, dispatcher):
        __module__ = "asyncore"
        __doc__ = _core.file_dispatcher.__doc__
