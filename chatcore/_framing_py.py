"""Pure-Python framing engine, the twin of the compiled ``chatcore._framing_c``.

Both modules expose the same names with the same behaviour, and neither touches a
socket: they take bytes and a *channel* object (anything shaped like
``async_chat``) and call its methods.

* ``Framer`` is the incoming side.  It splits a byte stream by the channel's
  terminator exactly as CPython 3.11's ``asynchat.async_chat.handle_read`` does,
  but in O(bytes received): it walks the data with an offset instead of
  re-slicing the unconsumed rest after every message.
* ``push``, ``initiate_send`` and ``send_gathered`` are the outgoing side: the
  producer queue kept in ``channel.producer_fifo`` with stdlib's semantics,
  where the unsent rest of an immutable buffer is a memoryview slice instead
  of a copy, and a memoryview of any format or shape is sent as its bytes.
* ``SizeLimit`` is the descriptor behind ``ac_max_message_size`` and
  ``max_message_size``: it checks a value when it is assigned (the rule is
  ``chatcore.limits.check_limit``).

The tests run every behaviour test against both modules; keep them in step.
"""

import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .dispatch import dispatcher
from .limits import check_limit
from .outqueue import OutputQueue
from .terminators import check_terminators

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# push() appends to chatcore's own producer_fifo with deque's own method.
_deque_append = deque.append

__all__ = [
    "Framer",
    "SizeLimit",
    "collect_incoming_piece",
    "initiate_send",
    "join_incoming",
    "push",
    "send_gathered",
    "set_terminator",
]

# feed_messages(max_size=None): larger than any message can be, as in the
# compiled engine (PY_SSIZE_T_MAX).
_NO_LIMIT = sys.maxsize


class SizeLimit:
    """A channel attribute holding a size limit, checked when it is assigned.

    ``SizeLimit(name, default)`` in a class body makes ``instance.<name>``
    read the instance's own value, else *default* (also what the class
    reads).  Assigning checks the value with ``chatcore.limits.check_limit``
    (so a bad value fails at the assignment, with its name) and keeps the
    checked ``int`` or None on the instance as the plain attribute *key*
    (``_limit_<name>``), which the class holding the descriptor sets to
    *default* (``__set_name__``); ``del instance.<name>`` goes back to the
    default.  Nothing asks for the instance's ``__dict__``: on Python 3.11 an
    object whose ``__dict__`` has been asked for is slower at every attribute
    access from then on (about a quarter more for a handler's own code).
    """

    __slots__ = ("_name", "_default", "_key")

    def __init__(self, name: str, default: Optional[int] = None) -> None:
        if type(name) is not str:
            raise TypeError("SizeLimit name must be a str, not %s" % type(name).__name__)
        self._name = name
        self._default = check_limit(default, name)
        self._key = sys.intern("_limit_" + name)

    @property
    def name(self) -> str:
        """The attribute's name, used in errors."""
        return self._name

    @property
    def default(self) -> Optional[int]:
        """What the class, and an instance that set nothing, read."""
        return self._default

    @property
    def key(self) -> str:
        """The plain attribute that holds the value: the instance's own, else the class's default."""
        return self._key

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, self._key, self._default)

    def __get__(self, instance: object, owner: Optional[type] = None) -> Optional[int]:
        if instance is None:
            return self._default
        return getattr(instance, self._key, self._default)

    def __set__(self, instance: object, value: Optional[int]) -> None:
        object.__setattr__(instance, self._key, check_limit(value, self._name))

    def __delete__(self, instance: object) -> None:
        try:
            object.__delattr__(instance, self._key)
        except AttributeError:
            raise AttributeError(self._name) from None

    def __repr__(self) -> str:
        return "SizeLimit(%r, %r)" % (self._name, self._default)


# async_chat methods that legacy handlers call once or twice per message; they
# live here so the compiled twin can speed them up.


def set_terminator(
    channel: Any,
    term: Union[bytes, bytearray, memoryview, str, int, "tuple[bytes | bytearray | memoryview, ...]", None],
) -> None:
    """Set the input delimiter: bytes of any length, a tuple of them, a byte count, or None."""
    if type(term) is bytes:
        channel.terminator = term
        return
    if isinstance(term, tuple):
        # Checked (and bytes-like elements converted) once, here: a handler
        # that sets the same tuple again after every message pays nothing.
        if term is not getattr(channel, "terminator", None):
            channel.terminator = check_terminators(term)
        return
    if isinstance(term, str) and channel.use_encoding:
        term = bytes(term, channel.encoding)
    elif isinstance(term, int) and term < 0:
        raise ValueError("the number of received bytes must be positive")
    channel.terminator = term


def collect_incoming_piece(channel: Any, data: bytes) -> None:
    """Keep *data* for ``join_incoming`` (stdlib's ``_collect_incoming_data``)."""
    channel.incoming.append(data)


def join_incoming(channel: Any) -> bytes:
    """The pieces kept so far as one bytes object, and forget them (``_get_data``)."""
    incoming = channel.incoming
    data = b"".join(incoming)
    del incoming[:]
    return data


def _terminator_bytes(terminator: Any) -> bytes:
    """The bytes of a sequence terminator, or a TypeError naming what it got."""
    if type(terminator) is bytes:
        return terminator
    try:
        return bytes(memoryview(terminator))
    except TypeError:
        raise TypeError("terminator must be bytes-like, an int or None, not %r" % type(terminator).__name__) from None


def _partial_terminator_length(data: bytes, start: int, terminator: bytes) -> int:
    """Length of the longest proper prefix of *terminator* that ends *data[start:]*."""
    # Such a prefix starts where the terminator's first byte occurs in the
    # last len(terminator) - 1 bytes; the earliest match is the longest.
    end = len(data)
    index = end - len(terminator) + 1
    if index < start:
        index = start
    first = terminator[:1]
    index = data.find(first, index)
    while index >= 0:
        if terminator.startswith(data[index:]):
            return end - index
        index = data.find(first, index + 1)
    return 0


class _TerminatorSet:
    """A tuple terminator, prepared once: its bytes, and where each of them next matches.

    ``next_message_end`` finds the earliest match at or after a position
    (the longest of those starting there).  Each terminator's own next
    match, or "none up to the end of the buffer", is remembered and reused
    until the position passes it, so framing many messages out of one
    buffer searches every byte of it once per terminator, never once per
    message.
    """

    __slots__ = (
        "source",
        "terminators",
        "longest",
        "first_bytes",
        "found",
        "generation",
        "matched",
        "held",
        "searched_bytes",
    )

    def __init__(self, source: "tuple[Any, ...]") -> None:
        #: The tuple as the channel holds it (compared by identity).
        self.source = source
        self.terminators = check_terminators(source)
        self.longest = max(len(terminator) for terminator in self.terminators)
        self.first_bytes = frozenset(terminator[0] for terminator in self.terminators)
        # Per terminator: its first match at or after the position it was
        # last searched from, -1 for none up to the end of the buffer, -2
        # for not searched in this buffer (the framer's generation) yet.
        self.found = [_UNSEARCHED] * len(self.terminators)
        self.generation = -1
        #: What ``next_message_end`` found: the terminator, or (none
        #: found) how many bytes at the end must wait for the next read.
        self.matched = self.terminators[0]
        self.held = 0
        #: Bytes the searches have covered so far (each from its start to its
        #: match, or to the end): what the tests check stays linear.
        self.searched_bytes = 0

    def next_message_end(self, data: bytes, pos: int, generation: int) -> int:
        """Start of the terminator ending the message at *pos* (``matched``), or -1 (then ``held``).

        A match is taken only where no terminator that could still complete
        in the next read starts at or before it (an earlier start wins, and
        at the same start a longer terminator), so the messages are the same
        however the stream is cut into reads.
        """
        found = self.found
        if generation != self.generation:
            self.generation = generation
            found[:] = [_UNSEARCHED] * len(found)
        best = -1
        matched = self.matched
        index = 0
        for terminator in self.terminators:
            at = found[index]
            if at < pos and at != -1:
                at = found[index] = data.find(terminator, pos)
                self.searched_bytes += (len(data) if at < 0 else at + len(terminator)) - pos
            if at >= 0 and (best < 0 or at < best or (at == best and len(terminator) > len(matched))):
                best = at
                matched = terminator
            index += 1
        end = len(data)
        if best >= 0:
            self.matched = matched
            if best + self.longest <= end:
                return best  # no terminator can still start at or before it
        held = self.partial_length(data, pos)
        if 0 <= best < end - held:
            return best
        self.held = held
        return -1

    def partial_length(self, data: bytes, pos: int) -> int:
        """Length of the longest end of *data[pos:]* that is a proper prefix of one of the terminators."""
        end = len(data)
        start = end - self.longest + 1
        if start < pos:
            start = pos
        first_bytes = self.first_bytes
        # The earliest start is the longest suffix.
        for index in range(start, end):
            if data[index] in first_bytes:
                tail = data[index:]
                for terminator in self.terminators:
                    if len(terminator) > len(tail) and terminator.startswith(tail):
                        return end - index
        return 0


# _TerminatorSet.found: not searched in the current buffer yet.
_UNSEARCHED = -2


#: Message mode: a piece shorter than this is added to a bytearray at the end
#: of the message's parts instead of being kept as a part of its own, so a
#: message arriving in tiny reads costs its bytes, not an object per read.
_SMALL_PART = 1024


class Framer:
    """Incoming terminator engine for one channel.

    Between calls to ``feed`` the framer keeps only what stdlib keeps in
    ``ac_in_buffer``: a partial terminator at the end of the last read (or
    whatever the application stored through ``pending``).  During ``feed`` the
    unprocessed rest is visible and replaceable through ``pending`` too, so a
    handler that clears ``ac_in_buffer`` or calls ``discard_buffers()`` inside
    ``found_terminator()`` stops the processing as it would in stdlib.
    """

    __slots__ = (
        "_data",
        "_pos",
        "_feeding",
        "_parts",
        "_body_len",
        "_count_left",
        "_dropping",
        "_collected",
        "_found_owed",
        "_terminators",
        "_generation",
        "_held",
        "_matched_set",
    )

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0
        self._feeding = 0
        # Message mode only: the body so far of a message spanning reads, as
        # parts joined once when it is complete (bytes pieces, and bytearrays
        # gathering small ones), and its length; and the bytes an
        # integer-framed message still needs.
        self._parts: list[Union[bytes, bytearray]] = []
        self._body_len = 0
        self._count_left = 0
        # Both modes: whether the current message overflowed and is being
        # skipped.  Collect mode: bytes of it handed over so far.
        self._dropping = False
        self._collected = 0
        # Collect mode: the piece completing an integer-framed message was
        # handed over but collect_incoming_data() raised, so found_terminator()
        # is still due; it runs first thing in the next feed.  Like a bytes
        # terminator kept in ``pending``, replacing ``pending`` drops it.
        self._found_owed = False
        # A tuple terminator: the last one seen, prepared (_TerminatorSet).
        # Its remembered match positions index ``_data``, and hold while
        # ``_generation`` (counting every new ``_data``) is unchanged.
        self._terminators: Optional[_TerminatorSet] = None
        self._generation = 0
        # After a sequence terminator is not found: how many bytes at the end
        # may start one (they wait for the next read).
        self._held = 0
        # Whether channel.matched_terminator was set (a tuple matched), so
        # that a message ended by anything else sets it back to None.
        self._matched_set = False

    @property
    def pending(self) -> bytes:
        """Received bytes not yet handed to the channel (stdlib's ``ac_in_buffer``)."""
        return self._data[self._pos :]

    @pending.setter
    def pending(self, value: "ReadableBuffer") -> None:
        self._data = bytes(memoryview(value))
        self._pos = 0
        self._generation += 1
        self._found_owed = False

    @property
    def feeding(self) -> bool:
        """True while ``feed`` is running (a handler callback re-entered it)."""
        return self._feeding > 0

    def feed(
        self, channel: Any, data: "ReadableBuffer", call_get_terminator: bool = True, max_size: Optional[int] = None
    ) -> None:
        """Append *data* to the pending bytes and deliver every complete piece.

        Calls ``channel.collect_incoming_data(bytes)`` and
        ``channel.found_terminator()`` as stdlib does, reading the terminator
        again before each step because a handler may change it.  With
        *call_get_terminator* false the terminator is read straight from
        ``channel.terminator`` (only correct when ``get_terminator`` is not
        overridden).  An exception from a callback propagates; bytes already
        handed to a callback count as consumed, so nothing is delivered twice.

        *max_size* (None: no limit; else an int >= 0, see
        ``chatcore.limits``) bounds a message framed by a bytes
        terminator: before a piece would take it past *max_size* bytes, the
        framer calls ``channel.handle_message_overflow()`` once instead,
        skips the message's remaining bytes up to and including its
        terminator, and does not call ``found_terminator()`` for it.

        A piece of an integer-framed message counts the terminator down by
        its length after ``collect_incoming_data`` returns, or raises (the
        handler reads the count before the piece there, as in stdlib).  If
        the piece completing the message raises, the terminator is 0 and
        ``found_terminator()`` runs at the start of the next feed.
        """
        if max_size is not None and (type(max_size) is not int or max_size < 0):
            max_size = check_limit(max_size, "max_size")
        # One Python frame per read: the framing loop, and the steps around
        # it that feed_messages shares, are written out here.
        if type(data) is not bytes:
            data = bytes(data) if type(data) is memoryview else bytes(memoryview(data))
        if self._pos < len(self._data):
            data = self._data[self._pos :] + data
        self._data = data
        self._pos = 0
        self._generation += 1
        self._feeding += 1
        try:
            if self._found_owed:
                self._found_owed = False
                channel.found_terminator()
            while True:
                # A callback may have replaced the buffer: re-read it every step.
                data = self._data
                pos = self._pos
                end = len(data)
                if pos >= end:
                    return
                if call_get_terminator:
                    terminator = channel.get_terminator()
                else:
                    terminator = channel.terminator
                if type(terminator) is bytes and terminator:
                    # The common case first.
                    index = data.find(terminator, pos)
                    after = index + len(terminator)
                elif not terminator:
                    self._dropping = False
                    self._pos = end
                    channel.collect_incoming_data(data[pos:end])
                    continue
                elif isinstance(terminator, int):
                    if terminator < 0:
                        raise ValueError("terminator must not be negative, got %d" % terminator)
                    self._dropping = False
                    available = end - pos
                    if available < terminator:
                        self._pos = end
                        try:
                            channel.collect_incoming_data(data[pos:end])
                        finally:
                            # Handed over, so counted, even if the handler raised.
                            channel.terminator = channel.terminator - available
                        continue
                    self._pos = pos + terminator
                    try:
                        channel.collect_incoming_data(data[pos : pos + terminator])
                    except BaseException:
                        # The message is complete: its found_terminator()
                        # is owed to the next feed.
                        channel.terminator = 0
                        self._collected = 0
                        self._found_owed = True
                        raise
                    channel.terminator = 0
                    self._collected = 0
                    if self._matched_set:
                        self._forget_match(channel)
                    channel.found_terminator()
                    continue
                else:
                    index, after = self._sequence_match(channel, terminator, data, pos)
                if index >= 0:
                    if self._matched_set and type(terminator) is bytes:
                        self._forget_match(channel)
                    if self._collected or self._dropping or (max_size is not None and index - pos > max_size):
                        # A message that spans reads, or one being skipped or too long.
                        collected = self._collected
                        self._collected = 0
                        self._pos = after
                        if self._dropping:
                            self._dropping = False
                            continue
                        if max_size is not None and index - pos > max_size - collected:
                            # The message has ended: nothing left to skip.
                            channel.handle_message_overflow()
                            continue
                    if index > pos:
                        # The piece counts as consumed, its terminator not
                        # yet: if the handler raises, the message boundary
                        # stays for the next read.
                        self._pos = index
                        channel.collect_incoming_data(data[pos:index])
                        if self._data is data and self._pos == index:
                            self._pos = after
                    else:
                        self._pos = after
                    channel.found_terminator()
                    continue
                partial = self._held_length(terminator, data, pos)
                body_end = end - partial
                if body_end == pos:
                    return
                self._pos = body_end
                if self._dropping:
                    return
                if max_size is not None and body_end - pos > max_size - self._collected:
                    self._dropping = True
                    self._collected = 0
                    channel.handle_message_overflow()
                    continue  # the handler may have replaced the buffer
                self._collected += body_end - pos
                channel.collect_incoming_data(data[pos:body_end])
                if partial:
                    return
        finally:
            self._feeding -= 1
            # Keep only the unprocessed rest, as an owned object.
            if self._pos:
                self._data = self._data[self._pos :]
                self._pos = 0
                self._generation += 1

    def feed_messages(self, channel: Any, data: "ReadableBuffer", max_size: Optional[int]) -> None:
        """Message mode: hand each complete message to ``channel.handle_message``.

        One ``bytes`` per message, terminator excluded, instead of pieces to
        ``collect_incoming_data`` plus ``found_terminator``.  The terminator is
        read from ``channel.terminator`` before each message: bytes frame up
        to the next occurrence, an int frames messages of exactly that many
        bytes (it is not counted down), None/0/b"" makes each read one message.
        A message longer than *max_size* (None: no limit) is never held: the
        framer calls ``channel.handle_message_overflow()`` once, drops the
        message's bytes up to its end, and goes on with the next message.
        """
        if max_size is None:
            max_size = _NO_LIMIT
        elif type(max_size) is not int or max_size < 0:
            max_size = check_limit(max_size, "max_size")
        if type(data) is not bytes:
            data = bytes(data) if type(data) is memoryview else bytes(memoryview(data))
        if self._pos < len(self._data):
            data = self._data[self._pos :] + data
        self._data = data
        self._pos = 0
        self._generation += 1
        self._feeding += 1
        try:
            self._deliver_messages(channel, max_size)
        finally:
            self._feeding -= 1
            # Keep only the unprocessed rest, as an owned object.
            if self._pos:
                self._data = self._data[self._pos :]
                self._pos = 0
                self._generation += 1

    def _deliver_messages(self, channel: Any, max_size: int) -> None:
        while True:
            data = self._data
            pos = self._pos
            end = len(data)
            if pos >= end:
                return
            terminator = channel.terminator
            if not terminator:
                self._pos = end
                if self._matched_set:
                    self._forget_match(channel)
                self._complete(channel, data[pos:end], max_size)
            elif isinstance(terminator, int):
                if terminator < 0:
                    raise ValueError("terminator must not be negative, got %d" % terminator)
                if not self._count_left:
                    self._count_left = terminator
                    if terminator > max_size:
                        self._overflow(channel)
                        continue  # the handler may have replaced the buffer
                take = end - pos
                if self._count_left < take:
                    take = self._count_left
                self._pos = pos + take
                self._count_left -= take
                if self._count_left:
                    if not self._dropping:
                        self._add_part(data[pos : pos + take])
                elif self._dropping:
                    self._dropping = False
                else:
                    if self._matched_set:
                        self._forget_match(channel)
                    self._complete(channel, data[pos : pos + take], max_size)
            else:
                if type(terminator) is bytes:
                    index = data.find(terminator, pos)
                    after = index + len(terminator)
                    if self._matched_set and index >= 0:
                        self._forget_match(channel)
                else:
                    index, after = self._sequence_match(channel, terminator, data, pos)
                if index >= 0:
                    self._pos = after
                    if self._dropping:
                        self._dropping = False
                        self._drop_body()
                    else:
                        self._complete(channel, data[pos:index], max_size)
                    continue
                body_end = end - self._held_length(terminator, data, pos)
                self._pos = body_end
                if not self._dropping:
                    if self._body_len + body_end - pos > max_size:
                        self._overflow(channel)
                    elif body_end > pos:
                        self._add_part(data[pos:body_end])
                return

    def _sequence_match(self, channel: Any, terminator: Any, data: bytes, pos: int) -> "tuple[int, int]":
        """(start, end) of the terminator that ends the message at *pos*, or (-1, 0).

        For a terminator that is not ``bytes``: a tuple of them (setting
        ``channel.matched_terminator`` to the one found), or another
        bytes-like object.  When none is found, ``_held`` says how many
        bytes at the end must wait for the next read.
        """
        if isinstance(terminator, tuple):
            terminators = self._terminators
            if terminators is None or terminators.source is not terminator:
                terminators = self._terminators = _TerminatorSet(terminator)
            index = terminators.next_message_end(data, pos, self._generation)
            if index < 0:
                self._held = terminators.held
                return -1, 0
            matched = terminators.matched
            channel.matched_terminator = matched
            self._matched_set = True
            return index, index + len(matched)
        needle = _terminator_bytes(terminator)
        index = data.find(needle, pos)
        if index < 0:
            self._held = _partial_terminator_length(data, pos, needle) if len(needle) > 1 else 0
            return -1, 0
        if self._matched_set:
            self._forget_match(channel)
        return index, index + len(needle)

    def _held_length(self, terminator: Any, data: bytes, pos: int) -> int:
        """No terminator was found after *pos*: how many bytes at the end may start one."""
        if type(terminator) is bytes:
            return _partial_terminator_length(data, pos, terminator) if len(terminator) > 1 else 0
        return self._held  # what _sequence_match found

    def _forget_match(self, channel: Any) -> None:
        """A message ended by a single terminator, a count or a read: no tuple element matched."""
        self._matched_set = False
        channel.matched_terminator = None

    def _add_part(self, piece: bytes) -> None:
        """Add *piece* to the body of the message in progress."""
        parts = self._parts
        self._body_len += len(piece)
        if len(piece) >= _SMALL_PART:
            parts.append(piece)
        elif parts and type(parts[-1]) is bytearray:
            parts[-1] += piece
        else:
            parts.append(bytearray(piece))

    def _drop_body(self) -> None:
        self._parts = []
        self._body_len = 0

    def _complete(self, channel: Any, last_piece: bytes, max_size: int) -> None:
        """Hand over the message that ends with *last_piece*, or report its overflow."""
        if self._body_len + len(last_piece) > max_size:
            self._overflow(channel)
            self._dropping = False  # the message has ended: nothing left to skip
            return
        if self._body_len:
            parts = self._parts
            parts.append(last_piece)
            self._drop_body()
            last_piece = b"".join(parts)
        channel.handle_message(last_piece)

    def _overflow(self, channel: Any) -> None:
        self._drop_body()
        self._dropping = True
        channel.handle_message_overflow()


def _byte_view(view: memoryview) -> Any:
    """*view* as a flat view of unsigned bytes, or a bytes copy of it.

    ``len()`` and slices of a memoryview count items, which are not bytes
    for a typed view (``memoryview(array('i', ...))``); the outgoing queue
    counts bytes, so every memoryview is normalised where it enters it.  A
    plain byte view is kept (zero-copy); a C-contiguous one of any format
    or shape is cast to 'B' (still zero-copy); the rest (strided, or a shape
    ``cast`` refuses) is copied once, in C order.
    """
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        try:
            return view.cast("B")
        except TypeError:  # e.g. a shape with zeros
            pass
    return bytes(view)


def push(channel: Any, data: Union[bytes, bytearray, memoryview]) -> None:
    """Queue *data* on ``channel.producer_fifo`` in ``ac_out_buffer_size`` pieces."""
    if type(data) is not bytes:
        if type(data) is memoryview:
            data = _byte_view(data)
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("push() takes bytes, bytearray or memoryview, not %r" % type(data).__name__)
    fifo = channel.producer_fifo
    piece = channel.ac_out_buffer_size
    size = len(data)
    if type(fifo) is OutputQueue:
        # chatcore's own queue: deque's append, past the Python-level one
        # that reports additions made behind push()'s back (push() reports
        # its own).
        if size <= piece:
            _deque_append(fifo, data)
            return
        for start in range(0, size, piece):
            _deque_append(fifo, data[start : start + piece])
    elif size <= piece:
        fifo.append(data)
    else:
        for start in range(0, size, piece):
            fifo.append(data[start : start + piece])


def initiate_send(channel: Any, zero_copy: bool = False) -> None:
    """Send from the head of ``channel.producer_fifo`` once, as stdlib does.

    Stdlib's steps, kept because applications observe them: empty buffers are
    dropped (and end this call with an empty ``send``), ``None`` closes the
    channel, producers are asked ``more()`` until one yields data, and at most
    one ``send`` of at most ``ac_out_buffer_size`` bytes is made.  With
    *zero_copy* (only when ``channel.send`` is not overridden, so nobody sees
    the difference) an immutable head is sliced through a memoryview instead
    of copied, and ``dispatcher.send`` is called directly, past the
    method lookup (the compiled engine takes its steps in line).  A
    memoryview at the head (appended directly, or returned by a producer) is
    first normalised to its bytes, so the sizes counted are bytes (stdlib
    counts items there).
    """
    fifo = channel.producer_fifo
    # A slice of the head, or what a producer gave: any type a program queued.
    data: Any
    while fifo and channel.connected:
        first = fifo[0]
        if type(first) is memoryview:
            normal = _byte_view(first)
            if normal is not first:
                fifo[0] = first = normal
        if not first:
            del fifo[0]
            if first is None:
                channel.handle_close()
                return
        limit = channel.ac_out_buffer_size
        if zero_copy and type(first) is bytes:
            if len(first) <= limit:
                # first[:limit] would be first itself.
                data = first
            else:
                first = memoryview(first)
                data = first[:limit]
        else:
            try:
                data = first[:limit]
            except TypeError:
                data = _NOT_SLICEABLE
        if data is _NOT_SLICEABLE:
            data = first.more()
            if type(data) is memoryview:
                data = _byte_view(data)
            if data:
                fifo.appendleft(data)
            else:
                del fifo[0]
            continue
        if isinstance(data, str) and channel.use_encoding:
            data = bytes(data, channel.encoding)
        try:
            if zero_copy:
                sent = _dispatcher_send(channel, data)
            else:
                sent = channel.send(data)
        except OSError:
            channel.handle_error()
            return
        if sent:
            if sent < len(data) or limit < len(first):
                if zero_copy and type(first) is bytes:
                    # The rest of a head sent whole: a view, not a copy.
                    fifo[0] = memoryview(first)[sent:]
                else:
                    fifo[0] = first[sent:]
            else:
                del fifo[0]
        return


_NOT_SLICEABLE = object()
_stock_send = dispatcher.send


def _dispatcher_send(channel: Any, data: Any) -> int:
    """``dispatcher.send`` itself (the compiled engine takes its steps in line)."""
    return _stock_send(channel, data)


#: Most buffers one gathered send takes: below every platform's IOV_MAX.
GATHER_LIMIT = 512


def send_gathered(fifo: "deque[Any]", sendmsg: Callable[[list[Any]], int], max_bytes: int) -> int:
    """Send the plain buffers at the head of *fifo* in one ``sendmsg`` call.

    Gathers bytes, bytearray and memoryview entries (stopping at ``None``, a
    producer, *max_bytes* or ``GATHER_LIMIT`` buffers), calls
    ``sendmsg(buffers)`` once and removes what it sent from *fifo*; the unsent
    rest of a bytes or memoryview head is left as a memoryview slice, of a
    bytearray as a copy (it may be mutated or resized by its owner later).
    Memoryviews are gathered as their bytes (see ``initiate_send``), and a
    normalised one that stays queued replaces its original.  Returns how
    many of the gathered bytes were not sent (0: all of them went, so the
    caller may gather again); exceptions from *sendmsg* propagate with
    *fifo* untouched.
    """
    buffers = []
    total = 0
    normalised = False
    for item in fifo:
        if type(item) is memoryview:
            normal = _byte_view(item)
            if normal is not item:
                item = normal
                normalised = True
        elif not isinstance(item, (bytes, bytearray)):
            break
        buffers.append(item)
        total += len(item)
        if total >= max_bytes or len(buffers) >= GATHER_LIMIT:
            break
    if not buffers:
        return 0
    sent = sendmsg(buffers)
    remaining = sent
    for index, item in enumerate(buffers):  # noqa: B007 (index is read after the loop)
        size = len(item)
        if remaining < size:
            break
        fifo.popleft()
        remaining -= size
    else:
        return 0
    # buffers[index:] are at the head of fifo now.
    if normalised:
        # Queue the normalised views, so none is normalised (or copied) again
        # by the next send.
        for offset in range(len(buffers) - index):
            fifo[offset] = buffers[index + offset]
    if remaining:
        head = buffers[index]
        if type(head) is bytearray:
            fifo[0] = head[remaining:]
        else:
            fifo[0] = memoryview(head)[remaining:]
    return total - sent


# The per-event steps of async_chat (they use push and initiate_send above),
# kept in their own module and re-exported under the names it lists.
from . import _framing_io_py  # noqa: E402
from ._framing_io_py import *  # noqa: E402, F403

__all__ += _framing_io_py.__all__
