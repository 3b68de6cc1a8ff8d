"""Stand-ins for the channel the sans-IO engine talks to, recording every call.

Incoming: ``CollectRecorder`` is the slice of ``async_chat`` that collect mode
(``Framer.feed``) calls, ``MessageRecorder`` the slice of ``message_chat``
that message mode (``Framer.feed_messages``) calls; either can change its
terminator from inside a callback, from a script or a function of the test.
Outgoing: ``Sender`` is the slice of ``async_chat`` that ``push`` and
``initiate_send`` use, ``Gatherer`` a ``sendmsg`` for ``send_gathered``; both
take what a socket would.  ``merged`` and ``data_of`` read the event lists
these and the recording channels of the tests keep.
"""

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, Union

from .fakes import sent_bytes

#: How many bytes one send takes: everything (None), at most N, or the
#: numbers of a sequence in turn, cycled.
Accept = Union[None, int, Sequence[int]]


def chunked(data: bytes, size: int) -> list[bytes]:
    """*data* cut into reads of *size* bytes (the last one shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def cut_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """*data* cut at each position of *cuts* that lies within it (an empty piece where a cut repeats an end)."""
    bounds = sorted({cut for cut in cuts if cut <= len(data)})
    return [data[a:b] for a, b in zip([0] + bounds, bounds + [len(data)])]


def merged(events: Iterable[tuple]) -> list[tuple]:
    """*events* with each run of ("data", bytes) entries joined into one.

    What the callbacks were given, whatever the cuts between reads; the join
    is linear, as streams run to MiB.
    """
    out: list[tuple] = []
    run: Optional[bytearray] = None
    for event in events:
        if event[0] == "data":
            if run is None:
                run = bytearray()
            run += event[1]
            continue
        if run is not None:
            out.append(("data", bytes(run)))
            run = None
        out.append(event)
    if run is not None:
        out.append(("data", bytes(run)))
    return out


def data_of(events: Iterable[tuple]) -> bytes:
    """All the bytes of the ("data", bytes) entries of *events*, in order."""
    return b"".join(event[1] for event in events if event[0] == "data")


class CollectRecorder:
    """The slice of async_chat the engine's collect mode talks to.

    ``events``: ("data", bytes) for what ``collect_incoming_data`` got
    (consecutive pieces joined), ("found", terminator) and ("overflow",
    terminator).  After each terminator the next one is taken from *script*,
    or ``on_found(recorder)`` runs instead.
    """

    def __init__(
        self,
        terminator: Any,
        script: Sequence[Any] = (),
        on_found: Optional[Callable[["CollectRecorder"], None]] = None,
    ) -> None:
        self.terminator = terminator
        self.events: list[tuple] = []
        self.script = list(script)
        self.on_found = on_found

    def get_terminator(self) -> Any:
        return self.terminator

    def collect_incoming_data(self, data: bytes) -> None:
        assert type(data) is bytes and data
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + data)
        else:
            self.events.append(("data", data))

    def found_terminator(self) -> None:
        self.events.append(("found", self.terminator))
        if self.on_found is not None:
            self.on_found(self)
        elif self.script:
            self.terminator = self.script.pop(0)

    def handle_message_overflow(self) -> None:
        self.events.append(("overflow", self.terminator))


class MessageRecorder:
    """The slice of message_chat the engine's message mode talks to.

    ``messages``: each message (a bytes object, checked); ``events``:
    ("message", message) and ("overflow",) in order; ``overflows`` counts the
    latter.  After each message the next terminator is taken from *script*,
    or ``on_message(recorder, message)`` runs instead.
    """

    def __init__(
        self,
        terminator: Any,
        script: Sequence[Any] = (),
        on_message: Optional[Callable[["MessageRecorder", bytes], None]] = None,
    ) -> None:
        self.terminator = terminator
        self.script = list(script)
        self.on_message = on_message
        self.messages: list[bytes] = []
        self.events: list[tuple] = []
        self.overflows = 0

    def handle_message(self, message: bytes) -> None:
        assert type(message) is bytes
        self.messages.append(message)
        self.events.append(("message", message))
        if self.on_message is not None:
            self.on_message(self, message)
        elif self.script:
            self.terminator = self.script.pop(0)

    def handle_message_overflow(self) -> None:
        self.overflows += 1
        self.events.append(("overflow",))


def feed_collect(engine: Any, channel: Any, chunks: Iterable[Any], max_size: Optional[int] = None, framer: Any = None):
    """Feed *chunks* to *framer* (a new one of *engine* unless given) in collect mode; the framer.

    The engine asks *channel* for its terminator at every read, as async_chat has it.
    """
    framer = framer or engine.Framer()
    for chunk in chunks:
        framer.feed(channel, chunk, True, max_size)
    return framer


def feed_messages(engine: Any, channel: Any, chunks: Iterable[Any], max_size: Optional[int] = None, framer: Any = None):
    """Feed *chunks* to *framer* (a new one of *engine* unless given) in message mode; the framer."""
    framer = framer or engine.Framer()
    for chunk in chunks:
        framer.feed_messages(channel, chunk, max_size)
    return framer


def _accepted(accept: Accept, call_number: int, offered: int) -> int:
    """How many of *offered* bytes send number *call_number* (from 0) takes under *accept*."""
    if accept is None:
        return offered
    if isinstance(accept, int):
        return min(accept, offered)
    return min(accept[call_number % len(accept)], offered)


class Sender:
    """The slice of async_chat the engine's outgoing queue talks to, with a socket's ``send()``.

    ``offered``: the bytes each send() was offered (C order, as a socket takes
    them; BufferError where a socket would refuse); ``data``: every byte
    taken, under *accept*; ``closed``/``errors``: how often
    ``handle_close``/``handle_error`` ran.
    """

    use_encoding = 0
    encoding = "latin-1"

    def __init__(self, out_buffer_size: int = 8, accept: Accept = None) -> None:
        self.ac_out_buffer_size = out_buffer_size
        self.producer_fifo: deque = deque()
        self.connected = True
        # Its own socket: with zero_copy (send not overridden) the engine
        # calls channel.socket.send, as dispatcher.send would.
        self.socket = self
        self.accept = accept
        self.offered: list[bytes] = []
        self.data = b""
        self.closed = 0
        self.errors = 0

    def send(self, data: Any) -> int:
        offered = sent_bytes(data)
        count = _accepted(self.accept, len(self.offered), len(offered))
        self.offered.append(offered)
        self.data += offered[:count]
        return count

    def handle_close(self) -> None:
        self.closed += 1
        self.connected = False

    def handle_error(self) -> None:
        self.errors += 1


def drain(engine: Any, sender: Sender, zero_copy: bool = False, turns: int = 20_000) -> bytes:
    """The bytes *sender* took, ``initiate_send`` called until its queue is empty or it closed.

    At most *turns* calls: a queue that does not drain returns what went so far.
    """
    for _ in range(turns):
        if not sender.producer_fifo or not sender.connected:
            break
        engine.initiate_send(sender, zero_copy)
    return sender.data


class Gatherer:
    """A ``sendmsg`` stand-in for ``send_gathered``: takes what *accept* allows, records each call.

    ``calls``: per call, the bytes of each buffer it was given (C order, as a
    socket takes them); ``data``: every byte taken.
    """

    def __init__(self, accept: Accept = None) -> None:
        self.accept = accept
        self.calls: list[list[bytes]] = []
        self.data = b""

    def __call__(self, buffers: Iterable[Any]) -> int:
        pieces = [sent_bytes(buffer) for buffer in buffers]
        joined = b"".join(pieces)
        count = _accepted(self.accept, len(self.calls), len(joined))
        self.calls.append(pieces)
        self.data += joined[:count]
        return count
