"""chatcore: asynchat and asyncore for Python 3.9+, with a compiled framing engine.

The public names are those of CPython 3.11's ``asynchat`` and ``asyncore``;
``chatcore.compat.install()`` makes unchanged ``import asynchat, asyncore``
programs run on chatcore.  ``implementation`` tells which framing engine is in
use: ``"cython"`` or ``"python"`` (CHATCORE_NO_EXTENSIONS=1, or no compiled
module).
"""

from ._framing import implementation
from .chat import async_chat, find_prefix_at_end, message_chat, simple_producer
from .dispatch import (
    ExitNow,
    close_all,
    compact_traceback,
    dispatcher,
    dispatcher_with_send,
    read,
    readwrite,
    socket_map,
    write,
)
from .eventloop import call_later, call_soon_threadsafe, loop, poll, poll2, poll3
from .timers import TimerHandle
from .workers import prefork

__version__ = "0.1.0"

__all__ = [
    "ExitNow",
    "TimerHandle",
    "async_chat",
    "call_later",
    "call_soon_threadsafe",
    "close_all",
    "compact_traceback",
    "dispatcher",
    "dispatcher_with_send",
    "find_prefix_at_end",
    "implementation",
    "loop",
    "message_chat",
    "poll",
    "poll2",
    "poll3",
    "prefork",
    "read",
    "readwrite",
    "simple_producer",
    "socket_map",
    "write",
]

try:
    from .dispatch import file_dispatcher, file_wrapper
except ImportError:  # not POSIX: asyncore had no file dispatchers there either
    pass
else:
    __all__ += ["file_dispatcher", "file_wrapper"]
