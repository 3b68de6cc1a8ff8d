"""``async_chat``: terminator-framed channels, as CPython 3.11's ``asynchat``.

The class keeps asynchat's whole surface (``set_terminator``, the two
callbacks, ``push``, producers, ``close_when_done``, ``producer_fifo``,
``ac_in_buffer``, ``incoming`` …) and hands the work to the framing engine
(``chatcore._framing``): the incoming search runs in O(bytes received) and the
unsent rest of a buffer is never copied.

Overrides are honoured where stdlib would call them: a subclass that overrides
``recv`` gets its ``recv`` called, one that overrides ``send`` gets exactly the
slices stdlib would pass, and an overridden ``get_terminator`` is consulted
before every step.  The fast paths (a reused receive buffer, memoryview
slices) are taken only where nothing observable changes.
"""

import math
import operator
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, AnyStr, Callable, Optional, Union

from . import _framing, coalesce
from .dispatch import PAUSED_BY_OUTPUT, PAUSED_BY_PEER_CLOSE, PAUSED_BY_USER, dispatcher, inherits
from .dispatch import pause_reading as _pause_reading
from .dispatch import resume_reading as _resume_reading
from .eventloop import call_later, note_interest_change, track_predicates
from .events import _RERAISED, DISCONNECTED
from .filesend import FileProducer
from .limits import check_limit, declare_limits
from .log import MessageKind
from .outqueue import OutputQueue

if TYPE_CHECKING:
    import ssl
    from typing import Protocol

    from _typeshed import HasFileno, ReadableBuffer

__all__ = ["async_chat", "find_prefix_at_end", "message_chat", "simple_producer"]

_BUFFER_TYPES = (bytes, bytearray, memoryview)

# A message stdlib never wrote, so the compat classes log it too: a peer can
# send an over-long line per connection it opens.
_OVERFLOW = MessageKind("message overflow", "warning")

_IDLE = MessageKind("idle timeout", "info")

#: What each queued entry counts toward ``ac_max_output_buffer`` besides its
#: bytes: about what a small bytes object and its queue slot take, so that a
#: flood of tiny pushes is bounded in memory, not only in payload.
OUTPUT_ENTRY_OVERHEAD = 64

# Queues up to this many entries are measured whenever backpressure is
# looked at (_update_output_pause); longer ones less often.
_ALWAYS_MEASURED = 64

# How many checks an idle timeout is cut into: a channel is closed between
# 1 and 1 + 1/_IDLE_CHECKS timeouts after its last activity, and a busy one
# costs _IDLE_CHECKS timer entries per timeout, not one per event.
_IDLE_CHECKS = 4


def _check_timeout(value: Any, name: str) -> Optional[float]:
    """*value* as a timeout: None, or a finite number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be None or a number of seconds, not %s" % (name, type(value).__name__))
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("%s must be a finite number of seconds > 0, got %r" % (name, value))
    return float(value)


def _watch_bits(idle_timeout: Optional[float], max_output: Optional[int]) -> int:
    """The ``_io_watched`` bits for these settings."""
    return (0 if idle_timeout is None else _WATCH_ACTIVITY) | (0 if max_output is None else _WATCH_OUTPUT)


class _WatchedSetting:
    """An async_chat attribute checked when assigned, which the channel acts on at once.

    Like ``chatcore.limits``' size limits: the instance's own value, else
    the class's; a bad value fails when it is assigned (or, in a class body,
    when the class is made).  Assigning on a channel that is being served
    starts or stops what the setting asks for (an idle watch, backpressure)
    there and then.
    """

    __slots__ = ("_check", "_default", "_key", "_name")

    def __init__(self, name: str, default: Any) -> None:
        self._name = name
        self._check, self._key = _WATCHED_SETTINGS[name]
        self._default = self._check(default, name)

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, self._key, self._default)

    def __get__(self, instance: object, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self._default
        return getattr(instance, self._key)

    def __set__(self, instance: Any, value: Any) -> None:
        object.__setattr__(instance, self._key, self._check(value, self._name))
        instance._watch_io()

    def __delete__(self, instance: Any) -> None:
        try:
            object.__delattr__(instance, self._key)
        except AttributeError:
            raise AttributeError(self._name) from None
        instance._watch_io()


# Each watched setting's check, and the plain attribute that holds an
# instance's (or the class's default) value.
_WATCHED_SETTINGS: dict[str, tuple[Callable[[Any, str], Any], str]] = {
    "ac_idle_timeout": (_check_timeout, "_idle_timeout"),
    "ac_max_output_buffer": (check_limit, "_max_output"),
}

# async_chat._io_watched bits: what reads and sends must do besides their job.
_WATCH_ACTIVITY = 1  # count activity (an idle timeout is set)
_WATCH_OUTPUT = 2  # look at the output queue (an output limit is set)

#: What ``push()`` takes (anything else is a TypeError, as in stdlib).
BytesLike = Union[bytes, bytearray, memoryview]

#: What ``set_terminator()`` takes: a delimiter (bytes-like; a str only with
#: ``use_encoding`` set), a tuple of bytes-like delimiters (whichever comes
#: first ends the message), a byte count, or None for "everything".
Terminator = Union[bytes, bytearray, memoryview, str, int, tuple[Union[bytes, bytearray, memoryview], ...], None]

if TYPE_CHECKING:

    class Producer(Protocol):
        """What ``push_with_producer()`` takes: ``more()`` gives the next data, empty when done.

        A str is encoded only with ``use_encoding`` set, as in stdlib.
        """

        def more(self) -> Union[bytes, bytearray, memoryview, str]: ...


def _disable_nagle(sock: Any) -> None:
    """Set TCP_NODELAY on *sock* if it is a TCP socket (anything else is left alone)."""
    if (
        isinstance(sock, socket.socket)
        and sock.type == socket.SOCK_STREAM
        and sock.family in (socket.AF_INET, socket.AF_INET6)
    ):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # e.g. already reset by the peer: the first send will tell


if hasattr(socket.socket, "sendmsg"):

    def _gathering_send(sock: socket.socket) -> Callable[[list[Any]], int]:
        return sock.sendmsg
else:  # Windows: no sendmsg; one joined send is still one call

    def _gathering_send(sock: socket.socket) -> Callable[[list[Any]], int]:
        return lambda buffers: sock.send(b"".join(buffers))


#: async_chat methods that are engine functions, bound in the class body
#: (most under another name in the engine: ``push`` is ``push_and_send``).
_ENGINE_METHODS = (
    "set_terminator",
    "_collect_incoming_data",
    "_get_data",
    "get_terminator",
    "handle_read",
    "_deliver_received",
    "push",
    "initiate_send",
)
_ENGINE_MODULES = ("chatcore._framing_c", "chatcore._framing_py", "chatcore._framing_io_py")


class async_chat(dispatcher):
    """A channel that splits input by a terminator and queues output in order.

    Subclasses implement ``collect_incoming_data(data)`` and
    ``found_terminator()``.
    """

    ac_in_buffer_size = 65536
    ac_out_buffer_size = 65536

    if TYPE_CHECKING:
        # To type checkers a plain attribute, which a subclass body may set.
        ac_max_message_size: Optional[int]
    else:
        #: The most bytes one message framed by a bytes terminator may hold before
        #: ``handle_message_overflow()`` runs; None for no limit (stdlib's
        #: behaviour, and the default in ``chatcore.compat.asynchat``).  Checked
        #: when set, in a subclass body or on an instance (``chatcore.limits``).
        ac_max_message_size = _framing.engine.SizeLimit("ac_max_message_size", 1 << 20)
    # Which attribute holds the limit, for handle_message_overflow's log line.
    _size_limit_name = "ac_max_message_size"

    if TYPE_CHECKING:
        ac_idle_timeout: Optional[float]
        ac_max_output_buffer: Optional[int]
    else:
        #: Seconds with no byte received or sent after which
        #: ``handle_idle_timeout()`` runs (between 1 and 1.25 times this
        #: after the last activity); None (the default, here and in compat)
        #: for never.  Activity is a read by ``handle_read``, a push sent at
        #: once, a send of queued data.
        ac_idle_timeout = _WatchedSetting("ac_idle_timeout", None)
        #: While more than this is queued to send (``output_buffer_size``,
        #: plus ``OUTPUT_ENTRY_OVERHEAD`` per queued entry), the channel stops
        #: reading; it reads again once the queue is below half of it.  A peer
        #: that sends without reading what comes back then fills its own
        #: socket, not the server's memory.  None for no limit (stdlib's
        #: behaviour, and the default in ``chatcore.compat.asynchat``).
        ac_max_output_buffer = _WatchedSetting("ac_max_output_buffer", 1 << 20)

    #: Whether a peer's end of data waits for the queued output to be sent
    #: before ``handle_close()`` (``_finish_after_peer_close``); stdlib's
    #: channels, and compat's, close at once.
    _drain_on_peer_close = True

    # _WATCH_* bits for the settings above that are on: what reads and sends
    # (the engines' included) do besides their job.  Derived from the
    # settings for every class: below for this one, by __init_subclass__ for
    # subclasses.
    _io_watched: int
    # Reads, pushes sent at once and sends of queued data so far (while watched).
    _activity = 0
    #: Seconds a TLS handshake may take (``start_tls()``) before the channel
    #: is closed; None for no limit.
    ac_tls_handshake_timeout: Optional[float] = 30.0
    # The TLS layer (chatcore.tls.TLSLayer) once start_tls() has been called.
    _tls: Any = None

    # Whether push_file() was ever called (close() then closes the files it was asked to).
    _files_pushed = False

    # The queue's length when _update_output_pause last measured it.
    _measured_length = 0
    # The timer of the next idle check, and what it compares.
    _idle_timer: Any = None
    _idle_seen = 0
    _idle_quiet = 0

    #: Whether pushes made while ``loop()`` dispatches a turn's events wait for
    #: the end of that turn and leave together, in gathered sends (see
    #: ``push()``).  False (the default in ``chatcore.compat.asynchat``) keeps
    #: stdlib's timing: every push is handed to the socket before it returns.
    ac_coalesce_sends = True

    #: Whether a TCP socket given to the channel gets ``TCP_NODELAY``.  True
    #: here, as asyncio does: with Nagle's algorithm a reply that follows
    #: another still unacknowledged waits for the peer's delayed ACK (40 ms
    #: on Linux) — a pipelining request/response client stalls on every such
    #: reply — and coalescing already gathers a turn's pushes into few sends.
    #: False in ``chatcore.compat.asynchat``: stdlib never set it, and a
    #: legacy program (or its test's fake socket) sees its own options only.
    ac_tcp_nodelay = True

    # Whether this channel's pushes wait for the current turn's end
    # (chatcore.coalesce sets and clears it).
    _send_deferred = False

    # Encoding str data silently hides application bugs, so it is opt-in.
    use_encoding = 0
    encoding = "latin-1"

    #: The current terminator (``set_terminator()``); unset until it is first set.
    terminator: Terminator

    #: With a tuple terminator, the element that ended the message being
    #: handled: set just before ``found_terminator()`` (``handle_message()``
    #: in ``message_chat``) runs.  It is the tuple's own element, a ``bytes``
    #: object (``set_terminator()`` stores bytes-like elements as their
    #: bytes).  None when the message was ended by a single terminator, a
    #: byte count or a read (``terminator`` says what ended it then).
    matched_terminator: Optional[bytes] = None

    #: The framing engine module; tests swap in the other implementation.
    _engine = _framing.engine

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A limit set in the class body is checked now (on instances, when set).
        declare_limits(cls, ("ac_max_message_size", cls._size_limit_name), cls._engine)
        for name in _WATCHED_SETTINGS:
            value = cls.__dict__.get(name)
            if name in cls.__dict__ and not hasattr(type(value), "__get__"):
                # A value in the class body: checked now, and still acted on
                # when an instance assigns its own.
                setattr(cls, name, _WatchedSetting(name, value))
                cls.__dict__[name].__set_name__(cls, name)
        cls._io_watched = _watch_bits(cls.ac_idle_timeout, cls.ac_max_output_buffer)
        # A subclass naming another engine gets that engine's methods too,
        # unless it (or a class between) defines its own.
        engine = cls.__dict__.get("_engine")
        if engine is None:
            return
        for method in _ENGINE_METHODS:
            current = getattr(cls, method)
            if getattr(current, "__module__", None) in _ENGINE_MODULES:
                # The same function of the other engine (message_chat's
                # _deliver_received is not async_chat's).
                setattr(cls, method, getattr(engine, current.__name__))

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None):
        self._framer = self._engine.Framer()
        # Where _get_data()/_collect_incoming_data() accumulate pieces.
        self.incoming: list[bytes] = []
        # Buffers, producers and None (= close) waiting to be sent, in order.
        self.producer_fifo: deque[Any] = OutputQueue()
        self.producer_fifo.set_owner(self)
        dispatcher.__init__(self, sock, map)

    @property
    def ac_in_buffer(self) -> bytes:
        """Received bytes the terminator search has not consumed yet."""
        return self._framer.pending

    @ac_in_buffer.setter
    def ac_in_buffer(self, value: "ReadableBuffer") -> None:
        self._framer.pending = value

    def collect_incoming_data(self, data: bytes) -> None:
        raise NotImplementedError("must be implemented in subclass")

    def found_terminator(self) -> None:
        raise NotImplementedError("must be implemented in subclass")

    if TYPE_CHECKING:
        # The methods the engine functions below are, as type checkers should
        # see them (the channel is ``self``); tests/test_typing.py checks that
        # the parameters agree with the engine's.
        def set_terminator(self, term: Terminator) -> None:
            """Set the input delimiter: stdlib's kinds, or a tuple of delimiters.

            *term* is a bytes-like delimiter (a str only with
            ``use_encoding`` set, as in stdlib), an int (a byte count,
            counted down as data is collected), None (collect everything),
            or a tuple of non-empty bytes-like delimiters, such as
            ``(b"\\r\\n", b"\\n")``: the earliest match in the stream ends
            the message, and of matches starting at the same position the
            longest; ``matched_terminator`` tells ``found_terminator()``
            which one it was.  A partial match at the end of a read waits
            for the next read, as for one delimiter, and so does a complete
            match that a longer delimiter of the tuple (or one starting
            earlier) could still turn out to be (with ``(b"ab", b"abc")``,
            ``b"ab"`` at the very end of a read is taken once the next byte
            is known not to be ``b"c"``): the messages are the same however
            the stream is cut into reads.  A tuple is checked here (empty,
            or with an empty delimiter: ValueError; with an element that is
            not bytes-like: TypeError), its bytes-like elements are stored
            as bytes, and the engines read a tuple's elements once per
            tuple object.
            """

        def _collect_incoming_data(self, data: bytes) -> None: ...
        def _get_data(self) -> bytes: ...
        def get_terminator(self) -> Terminator:
            """The current terminator, as ``set_terminator()`` stored it (an int counts down)."""

        def handle_read(self) -> None: ...
        def _deliver_received(self, data: "ReadableBuffer") -> None: ...
        def push(self, data: BytesLike) -> None: ...
        def initiate_send(self) -> None: ...
    else:
        # Hot in legacy handlers, so the engine provides them (see _ENGINE_METHODS).
        set_terminator = _framing.engine.set_terminator
        _collect_incoming_data = _framing.engine.collect_incoming_piece
        _get_data = _framing.engine.join_incoming
        # The per-event steps, compiled in the engine (chatcore._framing_io_py
        # is their pure-Python twin, with what each does): a request that
        # arrives and is answered crosses the fewest Python frames.  push()
        # documents the send timing (see also ``ac_coalesce_sends``).
        get_terminator = _framing.engine.get_terminator
        handle_read = _framing.engine.handle_read
        _deliver_received = _framing.engine.deliver_received
        push = _framing.engine.push_and_send
        initiate_send = _framing.engine.initiate_send_once

    def handle_write(self) -> None:
        tls = self._tls
        if tls is not None and tls.pending_output and not tls.flush():
            return  # records made earlier go first
        if self._may_coalesce():
            self._send_gathered()
        else:
            self.initiate_send()
            if self._io_watched:
                self._note_sent()

    def _note_sent(self) -> None:
        """A send, to a watched channel: activity, and maybe a pause's start or end."""
        watched = self._io_watched
        if watched & _WATCH_ACTIVITY:
            self._activity += 1
        if watched & _WATCH_OUTPUT and (self.producer_fifo or self._read_pauses) and self._fileno is not None:
            self._update_output_pause()

    def handle_close(self) -> None:
        self.close()

    def _finish_after_peer_close(self) -> None:
        """The peer has shut down its sending side (a read found the end of its data).

        Its replies may still be queued: with output queued, reading stops
        and ``handle_close()`` runs once the queue has been sent (bounded
        by ``ac_idle_timeout`` when set), through the same close-when-done
        marker ``close_when_done()`` queues; with nothing queued it runs
        now.  ``chatcore.compat.asynchat`` calls it at once, as stdlib.
        """
        if self._drain_on_peer_close and self.producer_fifo and self.connected:
            _pause_reading(self, PAUSED_BY_PEER_CLOSE)
            self.producer_fifo.append(None)
        else:
            self.handle_close()

    def close(self) -> None:
        # Stdlib would have sent coalesced pushes already: a reply pushed
        # just before close() (or before an error closes us) must still go.
        coalesce.flush(self)
        if self._tls is not None and self.connected:
            self._tls.close_notify()
        dispatcher.close(self)
        if self._files_pushed:
            self._release_files()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def handle_idle_timeout(self) -> None:
        """Nothing was received or sent for ``ac_idle_timeout`` seconds.

        The default logs the peer (info, rate-limited: ``chatcore.log``) and
        closes, dropping what is still queued.  An override that keeps the
        channel open gets another call after the next idle period.
        """
        _IDLE.log("nothing from or to %r for %s s: closing", self.addr, self.ac_idle_timeout)
        self.close()

    def pause_reading(self) -> None:
        """Stop reading from the peer until ``resume_reading()``.

        For a relay whose destination backs up (its ``output_buffer_size``
        grows): pause the source.  Independent of the pauses the channel
        makes itself (backpressure, a peer's half-close).
        """
        _pause_reading(self, PAUSED_BY_USER)

    def resume_reading(self) -> None:
        """Undo ``pause_reading()``; reading goes on unless the channel pauses it itself."""
        _resume_reading(self, PAUSED_BY_USER)

    @property
    def reading_paused(self) -> bool:
        """Whether the loop has stopped reading from this channel (for whatever reason)."""
        return bool(self._read_pauses)

    @property
    def output_buffer_size(self) -> int:
        """Bytes queued to send (producers count only what they have produced so far)."""
        total = 0
        for item in self.producer_fifo:
            kind = type(item)
            if kind is bytes or kind is bytearray:
                total += len(item)
            elif kind is memoryview:
                total += item.nbytes
        return total

    def _update_output_pause(self) -> None:
        """Pause reading above ``ac_max_output_buffer``, resume below half of it."""
        limit = self.ac_max_output_buffer
        fifo = self.producer_fifo
        paused = self._read_pauses & PAUSED_BY_OUTPUT
        # A TLS handshake must read before anything queued can go.
        if limit is None or not fifo or (self._tls is not None and not self._tls.established):
            self._measured_length = 0
            if paused:
                _resume_reading(self, PAUSED_BY_OUTPUT)
            return
        # Measuring is O(entries): a long queue is measured again only once
        # its length has changed by a quarter, so that sending it costs O(1)
        # per entry, not O(queue) per write event (the answer may come up to
        # a quarter of the queue late).
        length = len(fifo)
        measured = self._measured_length
        if length > _ALWAYS_MEASURED and 4 * abs(length - measured) < measured:
            return
        self._measured_length = length
        if paused:
            if self._output_cost() < limit / 2:
                _resume_reading(self, PAUSED_BY_OUTPUT)
        elif self._fileno is not None and self._output_cost() > limit:
            _pause_reading(self, PAUSED_BY_OUTPUT)

    def _output_cost(self) -> int:
        return self.output_buffer_size + OUTPUT_ENTRY_OVERHEAD * len(self.producer_fifo)

    def _watch_io(self) -> None:
        """Act on the settings now: start or stop the idle watch, apply the output limit."""
        # Read (and checked) through the attributes: a class may have had
        # plain values assigned since it was made.
        timeout = _check_timeout(self.ac_idle_timeout, "ac_idle_timeout")
        watched = _watch_bits(timeout, check_limit(self.ac_max_output_buffer, "ac_max_output_buffer"))
        if watched != self._io_watched:
            self._io_watched = watched
        if timeout is None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        elif self._idle_timer is None and self._fileno is not None:
            self._arm_idle_check(timeout)
        if self._fileno is not None and (self.producer_fifo or self._read_pauses):
            self._update_output_pause()

    def _arm_idle_check(self, timeout: float) -> None:
        """Start counting quiet periods from now."""
        self._idle_seen = self._activity
        self._idle_quiet = 0
        self._idle_timer = call_later(timeout / _IDLE_CHECKS, self._check_idle, map=self._map)

    def _check_idle(self) -> None:
        """The idle timer: count a quiet period, or time out after enough of them."""
        self._idle_timer = None
        timeout = self.ac_idle_timeout
        if timeout is None or self._fileno is None or self.accepting:
            return  # switched off, closed (or between sockets), or a listener
        if self._activity != self._idle_seen:
            self._idle_seen = self._activity
            self._idle_quiet = 0
        elif self._idle_quiet + 1 < _IDLE_CHECKS:
            self._idle_quiet += 1
        else:
            self._time_out()
            return
        self._idle_timer = call_later(timeout / _IDLE_CHECKS, self._check_idle, map=self._map)

    def _time_out(self) -> None:
        try:
            self.handle_idle_timeout()
        except _RERAISED:
            raise
        except BaseException:
            self.handle_error()
        # Still open (the handler decided so): watch the next idle period,
        # unless the handler has already set a watch going.
        timeout = self.ac_idle_timeout
        if timeout is not None and self._fileno is not None and self._idle_timer is None:
            self._arm_idle_check(timeout)

    def del_channel(self, map: Optional[dict[int, Any]] = None) -> None:
        # Coalesced pushes belong to the socket they were pushed on, which a
        # STARTTLS-style swap (del_channel, wrap, set_socket) replaces.
        coalesce.flush(self)
        dispatcher.del_channel(self, map)

    def set_socket(self, sock: Any, map: Optional[dict[int, Any]] = None) -> None:
        coalesce.flush(self)
        dispatcher.set_socket(self, sock, map)
        if self.ac_tcp_nodelay:
            _disable_nagle(sock)
        self._watch_io()

    def handle_error(self) -> None:
        if self._send_deferred:
            # What the handler pushed before it failed would have been sent
            # by stdlib; the error being handled is the one to report.
            try:
                coalesce.flush(self)
            except _RERAISED:
                raise
            except BaseException:
                pass
        dispatcher.handle_error(self)

    def handle_message_overflow(self) -> None:
        """A message outgrew the size limit; the default logs the peer (a warning,
        rate-limited: ``chatcore.log``) and closes.

        Runs once per such message, before the byte that would cross the
        limit is handed over.  The rest of the message, up to and including
        its terminator, is skipped without a ``found_terminator()`` call, so an
        override that keeps the channel open should drop what it has collected
        of the message so far.
        """
        _OVERFLOW.log(
            "message from %r longer than %s (%s bytes): closing",
            self.addr,
            self._size_limit_name,
            getattr(self, self._size_limit_name),
        )
        # Nothing more of this read reaches the handlers.
        self._framer.pending = b""
        self.handle_close()

    def flush_sends(self) -> None:
        """Send what this channel has queued now, not at the end of the turn.

        Does what a write event does: with nothing on the send path
        overridden, gathered sends of the queued buffers as far as the
        socket takes them (then stdlib's steps for a producer or a
        ``close_when_done()`` at the head); otherwise one ``initiate_send()``.
        What the socket does not take waits for write events, as always.
        """
        self._send_deferred = False
        async_chat.handle_write(self)

    def _may_coalesce(self) -> bool:
        """Whether sends may be gathered: nothing on the send path is overridden."""
        if self._tls is not None:
            # start_tls() put the TLS layer's send on the instance; the class's must be stock.
            return type(self).send is dispatcher.send and inherits(
                self, "initiate_send", self._engine.initiate_send_once
            )
        return (
            type(self.socket) is socket.socket
            and inherits(self, "send", dispatcher.send)
            and inherits(self, "initiate_send", self._engine.initiate_send_once)
        )

    def _send_gathered(self) -> None:
        """Send queued buffers with as few gathered sends as the socket takes."""
        # No note_interest_change: both callers (a write event, a deferred
        # push) have already made the loop look at this channel again.
        fifo = self.producer_fifo
        if not (fifo and self.connected):
            return
        send = _gathering_send(self.socket) if self._tls is None else self._tls.send_buffers
        full = False
        try:
            while fifo:
                if isinstance(fifo[0], _BUFFER_TYPES):
                    if self._engine.send_gathered(fifo, send, 4 * self.ac_out_buffer_size):
                        full = True  # the rest waits for the next write event
                        break
                elif type(fifo[0]) is FileProducer:
                    if self._send_file_head(fifo[0]):
                        full = True
                        break
                    if self._fileno is None:
                        return  # a file error closed the channel
                else:
                    break
        except BlockingIOError:
            full = True
        except OSError as err:
            if err.errno in DISCONNECTED:
                self.handle_close()
                return
            raise
        if not full and fifo and not isinstance(fifo[0], _BUFFER_TYPES):
            # None (close when done) or a producer: stdlib's own steps.
            self.initiate_send()
        watched = self._io_watched
        # In line: most turns leave nothing queued and nothing to count.
        if watched and (watched & _WATCH_ACTIVITY or fifo or self._read_pauses):
            self._note_sent()

    def _send_file_head(self, entry: FileProducer) -> bool:
        """Send some of the file at the head of the queue; True when the socket is full.

        Zero-copy where nothing stands between the queue and the socket (no
        TLS, a stream socket; the callers have checked that ``send`` and
        ``initiate_send`` are chatcore's own), else one chunk read and queued
        ahead of the entry for the gathered sends (never more than one chunk
        ahead of the socket).  A finished entry leaves the queue.
        """
        fifo = self.producer_fifo
        # (send_to() returns False once the entry has finished, failed or
        # switched to reads.)
        fd = self._fileno
        if entry.zero_copy and fd is not None and self._tls is None and self.socket.type == socket.SOCK_STREAM:
            if entry.send_to(fd):
                return True
        if not entry.finished:
            data = entry.more()
            if data:
                fifo.appendleft(data)
                return False
        if fifo and fifo[0] is entry:
            fifo.popleft()
        return False

    def push_file(
        self, file: "HasFileno", offset: int = 0, count: Optional[int] = None, *, close: bool = False
    ) -> None:
        """Queue *count* bytes of *file* from *offset* (up to its end for None), in order with other pushes.

        *file* is any object with ``fileno()``; *offset* is absolute, and
        the file's own position is neither used nor moved (positional reads;
        a pipe, which cannot seek, is read from where it is, with *offset*
        0).  How much there is is found by reading: a file shorter than
        *count* ends the entry at its end, and what was pushed after it
        follows.  With *close* the channel closes *file* once it is sent or
        when the channel closes; otherwise chatcore never closes it.

        The file is sent with ``os.sendfile`` where the platform has it, the
        file is a regular one, the socket a plain stream socket and neither
        ``send`` nor ``initiate_send`` overridden, and no TLS is started;
        otherwise (or where sendfile refuses, from the byte it stopped at)
        it is read and sent in ``ac_out_buffer_size`` chunks, one chunk
        ahead of the socket at most.  ``push_file()`` itself sends nothing:
        the file goes with the turn's gathered sends or at the next write
        event.  For ``ac_max_output_buffer`` a queued file counts as one
        entry (``OUTPUT_ENTRY_OVERHEAD``), plus the chunk read ahead.
        """
        offset = operator.index(offset)
        if offset < 0:
            raise ValueError("offset must be >= 0, got %r" % (offset,))
        if count is not None:
            count = operator.index(count)
            if count < 0:
                raise ValueError("count must be None or >= 0, got %r" % (count,))
        entry = FileProducer(self, file, offset, count, close, self.ac_out_buffer_size)
        self._files_pushed = True
        self.producer_fifo.append(entry)
        note_interest_change(self._map, self._fileno)

    def _release_files(self) -> None:
        """The channel is closing or dropping its output: files queued with close=True are closed."""
        for item in list(self.producer_fifo):
            if type(item) is FileProducer:
                item.finish()

    def push_with_producer(self, producer: "Producer") -> None:
        """Queue an object with a ``more()`` method; it is drained in order."""
        self.producer_fifo.append(producer)
        self.initiate_send()

    def _producer_fifo_filled(self) -> None:
        """Called by ``producer_fifo`` when something is added to it while empty."""
        note_interest_change(self._map, self._fileno)

    def readable(self) -> bool:
        # Always readable: a buffer-size test would contradict set_terminator().
        return True

    def writable(self) -> bool:
        tls = self._tls
        if tls is not None:
            return tls.writable(bool(self.producer_fifo)) or not self.connected
        # Truthy rather than bool, as in stdlib: the queue itself when it holds something.
        return self.producer_fifo or (not self.connected)  # type: ignore[return-value]

    def start_tls(
        self, context: "ssl.SSLContext", *, server_side: bool = False, server_hostname: Optional[str] = None
    ) -> None:
        """Switch the channel to TLS (implicit TLS, or STARTTLS after a command).

        Everything pushed before the call is sent in the clear first, in
        order; then the handshake runs inside the loop, without blocking,
        and from then on pushes are encrypted and reads decrypted, with the
        same framing, producers, ``close_when_done()``, limits and
        backpressure.  What was received in the clear after the message
        being handled (the rest of its read) is discarded: it is never
        delivered as if it had come over TLS.  ``handle_tls_established()``
        runs when the handshake completes; ``ssl_object`` gives the peer's
        certificate, the version and the cipher.  A handshake longer than
        ``ac_tls_handshake_timeout``, a peer that sends something else than
        TLS, an alert or a connection closed mid-handshake closes the
        channel after one log line.  Renegotiation is refused (the option
        is set on *context*).  A client passes *server_hostname*; the
        certificate checks are *context*'s (on by default for
        ``ssl.create_default_context()``).
        """
        if self._tls is not None:
            raise ValueError("start_tls() was already called on this channel")
        import ssl

        from .tls import TLSBoundary, TLSLayer

        context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
        timeout = _check_timeout(self.ac_tls_handshake_timeout, "ac_tls_handshake_timeout")
        layer = TLSLayer(self, context, server_side, server_hostname, timeout)
        self._tls = layer
        # Sent and read through the layer from now on (the engines honour
        # an instance's recv/send as they honour a subclass's).
        # (setattr: to type checkers the methods stay the class's.)
        setattr(self, "recv", layer.recv)  # noqa: B010
        setattr(self, "send", layer.send)  # noqa: B010
        # The rest of the read that brought the command came in the clear.
        self._framer.pending = b""
        if self.producer_fifo:
            self.producer_fifo.append(TLSBoundary(layer))
        else:
            layer.start_output()
        note_interest_change(self._map, self._fileno)

    @property
    def ssl_object(self) -> "Optional[ssl.SSLObject]":
        """The channel's ``ssl.SSLObject`` once ``start_tls()`` has been called; None before."""
        return None if self._tls is None else self._tls.ssl_object

    def handle_tls_established(self) -> None:
        """The TLS handshake has completed (``ssl_object`` tells with whom); the default does nothing."""

    def _send_in_clear(self, data: Any) -> int:
        """Send on the socket itself (what was pushed before ``start_tls()``)."""
        return dispatcher.send(self, data)

    def close_when_done(self) -> None:
        """Close the channel once everything queued so far has been sent."""
        self.producer_fifo.append(None)
        if type(self.producer_fifo) is not OutputQueue:
            # A queue the application put in place reports nothing itself.
            note_interest_change(self._map, self._fileno)

    def discard_buffers(self) -> None:
        """Drop all pending input and output (emergencies only)."""
        self._framer.pending = b""
        del self.incoming[:]
        if self._files_pushed:
            self._release_files()
        self.producer_fifo.clear()
        note_interest_change(self._map, self._fileno)
        if self._read_pauses & PAUSED_BY_OUTPUT:
            _resume_reading(self, PAUSED_BY_OUTPUT)


# async_chat's readable()/writable() answers change only through calls that
# report it (pushes, queue additions, close, add/del_channel), so the loop may
# skip idle channels that keep them.
track_predicates(async_chat.readable, async_chat.writable)


async_chat._io_watched = _watch_bits(async_chat.ac_idle_timeout, async_chat.ac_max_output_buffer)


class message_chat(async_chat):
    """An async_chat that hands over each complete message as one bytes object.

    For new code: implement ``handle_message(message)`` instead of
    ``collect_incoming_data`` and ``found_terminator``.  The framing engine
    copies each message out of the receive buffer once, with no call per
    piece.  Terminators work as in async_chat, except that an int frames
    every message at that size until changed (it is not counted down) and
    None makes each read one message.  Change the terminator from
    ``handle_message``, between messages.

    ``max_message_size`` bounds what one message may hold (1 MiB by default;
    None for no limit; a bad value fails when it is set, see ``chatcore.limits``).
    A longer message is never buffered: ``handle_message_overflow()`` runs
    once, the message's bytes are skipped up to its terminator, and framing
    goes on with the next message.  The default ``handle_message_overflow``
    logs the peer and closes the channel.
    """

    if TYPE_CHECKING:
        max_message_size: Optional[int]
    else:
        max_message_size = _framing.engine.SizeLimit("max_message_size", 1 << 20)

    def handle_message(self, message: bytes) -> None:
        raise NotImplementedError("must be implemented in subclass")

    _size_limit_name = "max_message_size"

    if not TYPE_CHECKING:
        _deliver_received = _framing.engine.deliver_messages


class simple_producer:
    """Yields *data* in pieces of at most *buffer_size* bytes."""

    def __init__(self, data: bytes, buffer_size: int = 512):
        self.data: bytes = data
        self.buffer_size: int = buffer_size

    def more(self) -> bytes:
        if len(self.data) > self.buffer_size:
            result = self.data[: self.buffer_size]
            self.data = self.data[self.buffer_size :]
            return result
        result, self.data = self.data, b""
        return result


def find_prefix_at_end(haystack: AnyStr, needle: AnyStr) -> int:
    """Length of the longest proper prefix of *needle* that *haystack* ends with.

    Assumes *needle* itself does not occur at the end (asynchat checks that first).
    """
    length = len(needle) - 1
    while length and not haystack.endswith(needle[:length]):
        length -= 1
    return length
