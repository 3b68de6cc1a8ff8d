# The per-event steps of async_chat: read and frame, push and send.
#
# Included by _framing_c.pyx; the twin is chatcore/_framing_io_py.py (its
# docstring says what these are for), and the two must stay in step.  These
# are async_chat's (and message_chat's) methods, compiled: binding=True makes
# each bind to the channel like a function defined in the class.

from cpython.method cimport PyMethod_Check, PyMethod_GET_FUNCTION, PyMethod_GET_SELF

import socket as _socket_module

from chatcore import coalesce as _coalesce
from chatcore.dispatch import dispatcher as _dispatcher
from chatcore.eventloop import interest_changes as _interest_changes
from chatcore.events import DISCONNECTED as _DISCONNECTED

__all__ += ["handle_read", "deliver_received", "deliver_messages", "get_terminator",
            "push_and_send", "initiate_send_once"]

_stock_recv = _dispatcher.recv
_stock_send = _dispatcher.send
_socket_type = _socket_module.socket
_NO_BUFFER = memoryview(b"")

#: Reusable receive buffers, as in the twin (list.pop/append are atomic).
free_receive_buffers = []


cdef inline object _bound_function(object channel, object method):
    """The function *method* binds to *channel*, or None (not a method of it)."""
    if PyMethod_Check(method) and <object>PyMethod_GET_SELF(method) is channel:
        return <object>PyMethod_GET_FUNCTION(method)
    return None


cdef inline bint _inherits(object channel, str name, object original):
    # dispatch.inherits: through the bound method, never channel.__dict__ (on
    # Python 3.11 asking for it slows every later attribute access).
    return _bound_function(channel, getattr(channel, name)) is original


cdef inline int _note_interest_change(object channel_map, object fd) except -1:
    # chatcore.eventloop.note_interest_change, in line (every push runs it);
    # the twin calls that function.
    cdef Py_ssize_t count
    pending = _interest_changes.get(id(channel_map))
    if pending is not None:
        # Not pending[-1]: this file is compiled with wraparound=False.
        count = len(pending)
        if not count or pending[count - 1] != fd:
            pending.append(fd)
    return 0


@cython.binding(True)
def handle_read(channel):
    """``async_chat.handle_read``: receive once and hand the bytes to framing."""
    cdef Py_ssize_t size, count
    if not _inherits(channel, "recv", _stock_recv) or not isinstance(channel.socket, _socket_type):
        _read_with_recv(channel)
        return
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
            if err.errno in _DISCONNECTED:
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
        received = view[:count]
        try:
            _deliver(channel, received)
        finally:
            received.release()
    finally:
        free.append(view)


cdef _read_with_recv(channel):
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


cdef _deliver(channel, data):
    cdef long watched
    method = channel._deliver_received
    function = _bound_function(channel, method)
    if function is deliver_received:
        _feed_pieces(channel, data)
    elif function is deliver_messages:
        channel._framer.feed_messages(channel, data, channel.max_message_size)
    else:
        method(data)
    watched = channel._io_watched
    if watched:
        _note_read(channel, watched)


cdef _note_read(channel, long watched):
    # The twin's _note_read: activity for the idle timeout, and backpressure.
    if watched & 1:
        channel._activity += 1
    if watched & 2 and channel.producer_fifo and not channel._send_deferred:
        channel._update_output_pause()


cdef _feed_pieces(channel, data):
    channel._framer.feed(
        channel, data,
        not _inherits(channel, "get_terminator", get_terminator),
        channel.ac_max_message_size)


@cython.binding(True)
def get_terminator(channel):
    """``async_chat.get_terminator``."""
    return channel.terminator


@cython.binding(True)
def deliver_received(channel, data):
    """``async_chat._deliver_received``: frame *data* into the two callbacks."""
    _feed_pieces(channel, data)


@cython.binding(True)
def deliver_messages(channel, data):
    """``message_chat._deliver_received``: frame *data* into ``handle_message`` calls."""
    channel._framer.feed_messages(channel, data, channel.max_message_size)


@cython.binding(True)
def initiate_send_once(channel):
    """``async_chat.initiate_send``: stdlib's one step of sending, then a look by the loop."""
    _send_once(channel)


cdef int _send_once(object channel) except -1:
    # initiate_send_once's body, also called by push_and_send without a
    # Python-level call.
    initiate_send(channel, _inherits(channel, "send", _stock_send))
    _note_interest_change(channel._map, channel._fileno)
    return 0


@cython.binding(True)
def push_and_send(channel, data):
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
    push(channel, data)
    if channel._send_deferred:
        return
    if channel.ac_coalesce_sends and channel._may_coalesce() and _coalesce.defer(channel):
        _note_interest_change(channel._map, channel._fileno)
        return
    if channel._io_watched & 1:
        channel._activity += 1  # sent now, not by a write event
    if _inherits(channel, "initiate_send", initiate_send_once):
        _send_once(channel)
        return
    _note_interest_change(channel._map, channel._fileno)
    channel.initiate_send()
