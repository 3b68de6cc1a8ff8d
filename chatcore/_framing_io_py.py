"""The per-event steps of ``async_chat``: read and frame, push and send.

Part of the framing engine (``chatcore._framing_py`` re-exports these; the
compiled engine compiles ``src/_framing_io.pxi``, their twin).  Unlike the
rest of the engine these touch the channel's socket: they are the bodies of
``async_chat.handle_read``, ``_deliver_received`` (both classes'),
``push`` and ``initiate_send``, bound to the class as methods, so a request
that arrives and is answered crosses the fewest Python frames.  Overrides
are honoured exactly where stdlib would call them: a subclass's ``recv``,
``send``, ``initiate_send`` or ``_deliver_received`` is what runs, and the
fast paths below are taken only where nothing of the sort is overridden.
"""

import socket
from typing import TYPE_CHECKING, Any, Union

from . import coalesce
from .dispatch import dispatcher, inherits
from .eventloop import note_interest_change
from .events import DISCONNECTED

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "deliver_messages",
    "deliver_received",
    "get_terminator",
    "handle_read",
    "initiate_send_once",
    "push_and_send",
]

_stock_recv = dispatcher.recv
_stock_send = dispatcher.send
_socket_type = socket.socket
_NO_BUFFER = memoryview(b"")

#: Reusable receive buffers (memoryviews over bytearrays), free for the taking.
#: A read pops one and puts it back when its handlers have returned; a read
#: that finds none (another thread is reading, or a handler re-entered
#: handle_read) makes one.  There are never more buffers than reads running
#: at the same time, so idle channels hold none.  list.pop/append are atomic.
free_receive_buffers: list[memoryview] = []


def handle_read(channel: Any) -> None:
    """``async_chat.handle_read``: receive once and hand the bytes to framing."""
    if not inherits(channel, "recv", _stock_recv) or not isinstance(channel.socket, _socket_type):
        _read_with_recv(channel)
        return
    # dispatcher.recv's semantics, into a reusable buffer.
    size = channel.ac_in_buffer_size
    free = free_receive_buffers
    view = free.pop() if free else _NO_BUFFER
    if len(view) < size:
        view = memoryview(bytearray(size))
    try:
        try:
            count = channel.socket.recv_into(view, size)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno in DISCONNECTED:
                channel.handle_close()
                count = 0
            else:
                channel.handle_error()
                return
        else:
            if not count:
                # The peer closed its side; pending bytes are still processed.
                channel._finish_after_peer_close()
        # Released afterwards, so no handler can keep a window on the
        # reused buffer.
        with view[:count] as received:
            _deliver(channel, received)
    finally:
        free.append(view)


def _read_with_recv(channel: Any) -> None:
    """handle_read through ``channel.recv()`` (overridden, or not a plain socket)."""
    try:
        data = channel.recv(channel.ac_in_buffer_size)
    except BlockingIOError:
        return
    except OSError:
        channel.handle_error()
        return
    if isinstance(data, str) and channel.use_encoding:
        data = bytes(data, channel.encoding)
    _deliver(channel, data)


def _deliver(channel: Any, data: Any) -> None:
    method = channel._deliver_received
    function = getattr(method, "__func__", None) if getattr(method, "__self__", None) is channel else None
    if function is deliver_received:
        deliver_received(channel, data)
    elif function is deliver_messages:
        deliver_messages(channel, data)
    else:
        method(data)
    watched = channel._io_watched
    if watched:
        _note_read(channel, watched)


def _note_read(channel: Any, watched: int) -> None:
    """A read, to a channel with an idle timeout or an output limit (async_chat._io_watched bits)."""
    if watched & 1:  # counting activity
        channel._activity += 1
    # A coalescing channel's pushes are looked at when the turn sends them.
    if watched & 2 and channel.producer_fifo and not channel._send_deferred:
        channel._update_output_pause()


def get_terminator(channel: Any) -> Any:
    """``async_chat.get_terminator``."""
    return channel.terminator


def deliver_received(channel: Any, data: "ReadableBuffer") -> None:
    """``async_chat._deliver_received``: frame *data* into the two callbacks."""
    # get_terminator() is called before every step only where it is overridden.
    channel._framer.feed(
        channel, data, not inherits(channel, "get_terminator", get_terminator), channel.ac_max_message_size
    )


def deliver_messages(channel: Any, data: "ReadableBuffer") -> None:
    """``message_chat._deliver_received``: frame *data* into ``handle_message`` calls."""
    channel._framer.feed_messages(channel, data, channel.max_message_size)


def initiate_send_once(channel: Any) -> None:
    """``async_chat.initiate_send``: stdlib's one step of sending, then a look by the loop."""
    channel._engine.initiate_send(channel, inherits(channel, "send", _stock_send))
    note_interest_change(channel._map, channel._fileno)


def push_and_send(channel: Any, data: Union[bytes, bytearray, memoryview]) -> None:
    """Queue *data* for sending (``async_chat.push``).

    With ``ac_coalesce_sends`` false (compat's default) it is handed to
    the socket at once, as far as the socket takes it, as stdlib does.
    With it true (chatcore's default), a push made while ``loop()``
    dispatches a turn's events waits for the end of that turn, when
    everything the turn pushed on this channel leaves in gathered sends;
    a push from anywhere else is sent at once.  A subclass that
    overrides ``send`` or ``initiate_send`` keeps stdlib's timing
    either way.  ``flush_sends()`` sends a waiting push now.
    """
    channel._engine.push(channel, data)
    if channel._send_deferred:
        # Already waiting for this turn's end, its interest change noted.
        return
    if channel.ac_coalesce_sends and channel._may_coalesce() and coalesce.defer(channel):
        # The engine appended with deque's own append, which reports nothing.
        note_interest_change(channel._map, channel._fileno)
        return
    if channel._io_watched & 1:
        channel._activity += 1  # sent now, not by a write event
    if inherits(channel, "initiate_send", initiate_send_once):
        initiate_send_once(channel)
        return
    note_interest_change(channel._map, channel._fileno)
    channel.initiate_send()
