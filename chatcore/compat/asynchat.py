"""chatcore as a drop-in ``asynchat`` module (see ``chatcore.compat``)."""

# asynchat's module-level names (the ``x as x`` form marks a re-export).
from collections import deque as deque

from ..chat import async_chat as _core_async_chat
from ..chat import find_prefix_at_end as find_prefix_at_end
from ..chat import simple_producer as simple_producer
from . import asyncore as asyncore


class async_chat(_core_async_chat, asyncore.dispatcher):
    __module__ = "asynchat"
    __doc__ = _core_async_chat.__doc__
    # Legacy code never asked for a limit: keep stdlib's unbounded input.
    # (Quoted, so the module's namespace gains no typing names.)
    ac_max_message_size: "int | None" = None
    # Legacy handlers push and then block, fork or swap the socket: every
    # push is handed to the socket at once, as stdlib does (install() can
    # opt in to coalescing).
    ac_coalesce_sends = False
    # Nor did stdlib touch socket options.
    ac_tcp_nodelay = False
    # Stdlib buffered whatever was pushed, and never timed a channel out.
    ac_max_output_buffer: "int | None" = None
    ac_idle_timeout: "float | None" = None
    # A peer's end of data closes at once, dropping what is still queued.
    _drain_on_peer_close = False
