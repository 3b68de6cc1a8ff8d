"""chatcore as a drop-in ``asyncore`` module.

Module-level names match CPython 3.11's ``asyncore``.  The module's globals
are read when a function or method runs, as asyncore reads its own, so code
that swaps them keeps working: a new ``socket_map``, a mock ``socket`` module
that ``create_socket()`` then builds sockets from, a fake ``select`` or
``time`` that ``poll()``/``loop()`` then call as asyncore does (instead of
chatcore's kernel poller), an ``os`` whose ``name`` says "nt".  Dispatchers
print as ``<asyncore.dispatcher ...>``.
"""

# asyncore's own module-level names, kept with it (the ``x as x`` form marks
# a re-export): legacy code reads them from here, ``from asyncore import *``
# included, and its tests replace some of them (see the module docstring).
import os as os
import select as select
import socket as socket
import sys as sys
import time as time
import warnings as warnings
from errno import (
    EAGAIN as EAGAIN,
)
from errno import (
    EALREADY as EALREADY,
)
from errno import (
    EBADF as EBADF,
)
from errno import (
    ECONNABORTED as ECONNABORTED,
)
from errno import (
    ECONNRESET as ECONNRESET,
)
from errno import (
    EINPROGRESS as EINPROGRESS,
)
from errno import (
    EINVAL as EINVAL,
)
from errno import (
    EISCONN as EISCONN,
)
from errno import (
    ENOTCONN as ENOTCONN,
)
from errno import (
    EPIPE as EPIPE,
)
from errno import (
    ESHUTDOWN as ESHUTDOWN,
)
from errno import (
    EWOULDBLOCK as EWOULDBLOCK,
)
from errno import (
    errorcode as errorcode,
)
from typing import Any, Optional

from .. import dispatch as _core
from .. import eventloop as _loop
from .. import events as _events
from ..dispatch import _strerror as _strerror
from ..dispatch import compact_traceback as compact_traceback
from ..events import (
    ExitNow as ExitNow,
)
from ..events import (
    _exception as _exception,
)
from ..events import (
    read as read,
)
from ..events import (
    readwrite as readwrite,
)
from ..events import (
    write as write,
)

_reraised_exceptions = _events._RERAISED
_DISCONNECTED = _events.DISCONNECTED

#: Shared with chatcore's own default map until a program assigns its own.
socket_map: dict[int, Any] = _core.socket_map

# This module, whose globals (socket_map, socket, select, time, os, sys) the
# functions and classes below read when they run, as asyncore's do: tests
# replace them (``asyncore.socket = mock_socket``) and expect to be obeyed.
_this = sys.modules[__name__]


def _resolve(map: Optional[dict[int, Any]]) -> dict[int, Any]:
    return socket_map if map is None else map


def poll(timeout: Optional[float] = 0.0, map: Optional[dict[int, Any]] = None) -> None:
    _loop.poll_once(timeout, _resolve(map), False, _this)


def poll2(timeout: Optional[float] = 0.0, map: Optional[dict[int, Any]] = None) -> None:
    _loop.poll_once(timeout, _resolve(map), True, _this)


poll3 = poll2


def loop(
    timeout: Optional[float] = 30.0,
    use_poll: bool = False,
    map: Optional[dict[int, Any]] = None,
    count: Optional[int] = None,
) -> None:
    _loop.run_loop(timeout, use_poll, _resolve(map), count, _this)


def close_all(map: Optional[dict[int, Any]] = None, ignore_all: bool = False) -> None:
    _core.close_all(_resolve(map), ignore_all)


class dispatcher(_core.dispatcher):
    __module__ = "asyncore"
    __doc__ = _core.dispatcher.__doc__
    _namespace = _this
    ignore_log_types: frozenset[str] = frozenset({"warning"})

    @staticmethod
    def _default_map() -> dict[int, Any]:
        return socket_map

    # stdlib's output, where stdlib wrote it (chatcore's own classes log
    # instead).  Overriding log_info also hands it every one of stdlib's
    # messages, none rate-limited: see _core.dispatcher._may_report.
    def log(self, message: Any) -> None:
        self._namespace.sys.stderr.write("log: %s\n" % str(message))

    def log_info(self, message: Any, type: str = "info") -> None:
        if type not in self.ignore_log_types:
            print("%s: %s" % (type, message))


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
