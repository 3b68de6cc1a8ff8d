"""Differential oracle: the compiled ``Framer`` against its pure-Python twin.

``TwinDriver`` plays the same operations on ``chatcore._framing_c.Framer`` and
``chatcore._framing_py.Framer``, each with its own recording channel, and
raises ``Mismatch`` as soon as anything observable differs: the callbacks (in
order, piece by piece, with ``pending`` as each callback sees it), the
exception a feed raised, ``pending``, the terminator, ``feeding``.  An
exception that no scripted step can cause (anything but ``Boom``, the
ValueError of a negative terminator and the TypeError of an integer
terminator replaced mid-count, see ``_expected_error``) is raised as
``Unexpected`` even when both engines agree on it.

Operations: feed a chunk (bytes, bytearray, memoryview, a slice of a larger
buffer, a strided view, an array of 2-byte items), change the terminator,
set ``pending`` from outside, change ``max_size``, and schedule an action for
the next ``found_terminator``/``handle_message``, ``collect_incoming_data`` or
``handle_message_overflow`` call: change the terminator, replace ``pending``,
raise ``Boom``, or feed more bytes re-entrantly.

Three users, one oracle:
* tests/test_stateful.py drives it from a hypothesis rule-based state machine;
* tests/fuzz/fuzz_framer.py (atheris) decodes fuzz inputs with ``run_program``;
* tests/fuzz/test_fuzz_corpus.py replays the corpus and every regression file
  through ``run_program`` without atheris.

The decoder here is plain Python on purpose (not ``atheris.FuzzedDataProvider``):
a crash file must decode to the same operations in CI, where atheris is not
installed.
"""

import array
from collections import deque
from collections.abc import Iterable
from typing import Any, Optional

from helpers.engines import ENGINES

__all__ = [
    "ALPHABET",
    "WHERES",
    "WRAPS",
    "Boom",
    "Mismatch",
    "Scheduled",
    "TwinDriver",
    "Unexpected",
    "compiled",
    "run_program",
]

#: The compiled engine, or None in a build without it.
compiled = ENGINES["c"]

#: Bytes terminators and fuzzed chunks are mostly made of, so terminators occur.
ALPHABET = b"\r\n.ab"
#: How a chunk is handed to ``feed``.
WRAPS = ("bytes", "bytearray", "memoryview", "slice", "strided", "wide")
#: Which callback a scheduled action runs in.
WHERES = ("found", "collect", "overflow")


class Boom(Exception):
    """Raised by a channel callback on purpose."""


class Mismatch(AssertionError):
    """The two engines disagree."""


class Unexpected(AssertionError):
    """A feed raised something no scripted operation can cause."""


def wrap(data: bytes, how: str) -> Any:
    """A fresh buffer object of kind *how* holding *data*."""
    if how == "bytearray":
        return bytearray(data)
    if how == "memoryview":
        return memoryview(data)
    if how == "slice":
        return memoryview(b"<" + data + b">")[1:-1]
    if how == "strided":
        return memoryview(bytes(b for byte in data for b in (byte, 0x5F)))[::2]
    if how == "wide" and len(data) % 2 == 0:
        items = array.array("H")
        items.frombytes(data)
        return items
    return bytes(data)


def _copy(value: Any) -> Any:
    """A private copy of a mutable terminator, so the channels share no object."""
    if isinstance(value, bytearray):
        return bytearray(value)
    if isinstance(value, memoryview):
        return memoryview(bytes(value))
    return value


def _seen(value: Any) -> Any:
    """A terminator as recorded: its type, and its bytes if it is a buffer."""
    if isinstance(value, (bytearray, memoryview)):
        return (type(value).__name__, bytes(value))
    return (type(value).__name__, value)


def _expected_error(exc: Exception) -> bool:
    """Errors a scripted step causes on purpose, in both engines as in stdlib."""
    message = str(exc)
    if isinstance(exc, ValueError):
        # A negative integer terminator.
        return "terminator must not be negative" in message
    # collect_incoming_data() replaced an integer terminator that was counting
    # down by a non-int: the engine's (and stdlib's) ``terminator - received``
    # fails.
    return "unsupported operand type(s) for -" in message


def _seen_pending(framer: Any) -> Any:
    """``pending`` as a callback sees it; long ones by length and ends.

    Recording all of it on every callback would make a run with thousands of
    short messages quadratic; the whole of it is compared after each step.
    """
    pending = framer.pending
    if len(pending) <= 64:
        return pending
    return (len(pending), pending[:24], pending[-24:])


class Scheduled:
    """Actions scheduled for a channel's callbacks: a queue per callback, one action taken per call.

    The twins' channels here use it, and so does the recording async_chat of
    test_stateful.py.
    """

    def __init__(self, wheres: Iterable[str]) -> None:
        self._queues: dict[str, deque] = {where: deque() for where in wheres}

    def add(self, where: str, action: tuple) -> None:
        self._queues[where].append(action)

    def take(self, where: str) -> Optional[tuple]:
        """The next action scheduled for the callback *where*, or None."""
        queue = self._queues[where]
        return queue.popleft() if queue else None

    def left(self) -> dict[str, int]:
        """How many actions are still scheduled, per callback."""
        return {where: len(queue) for where, queue in self._queues.items()}


class Channel:
    """The slice of a channel both framing modes talk to, recording every call."""

    def __init__(self, engine: Any, mode: str, terminator: Any, max_size: Optional[int], call_get_terminator: bool):
        self.framer = engine.Framer()
        self.mode = mode
        self.terminator = terminator
        self.max_size = max_size
        self.call_get_terminator = call_get_terminator
        self.events: list[tuple] = []
        self.actions = Scheduled(WHERES)

    # -- what the engine calls ------------------------------------------------

    def get_terminator(self) -> Any:
        return self.terminator

    def collect_incoming_data(self, data: Any) -> None:
        self.events.append(("data", type(data).__name__, bytes(data), _seen_pending(self.framer)))
        self._act("collect")

    def found_terminator(self) -> None:
        self.events.append(("found", _seen(self.terminator), _seen_pending(self.framer)))
        self._act("found")

    def handle_message(self, message: Any) -> None:
        self.events.append(("message", type(message).__name__, bytes(message), _seen_pending(self.framer)))
        self._act("found")

    def handle_message_overflow(self) -> None:
        self.events.append(("overflow", _seen_pending(self.framer)))
        self._act("overflow")

    # -- what the driver does ---------------------------------------------------

    def feed(self, data: Any) -> None:
        if self.mode == "messages":
            self.framer.feed_messages(self, data, self.max_size)
        else:
            self.framer.feed(self, data, self.call_get_terminator, self.max_size)

    def _act(self, where: str) -> None:
        action = self.actions.take(where)
        if action is None:
            return
        kind = action[0]
        if kind == "terminator":
            self.terminator = _copy(action[1])
        elif kind == "pending":
            self.framer.pending = wrap(action[1], action[2])
        elif kind == "raise":
            raise Boom(where)
        elif kind == "feed":
            self.events.append(("nested feed", action[1]))
            self.feed(wrap(action[1], action[2]))
            self.events.append(("nested feed done",))

    def state(self) -> tuple:
        return (
            self.framer.pending,
            _seen(self.terminator),
            self.framer.feeding,
            self.actions.left(),
        )


class TwinDriver:
    """Runs every operation on both engines and checks they agree after each one.

    *mode* is "collect" (``feed``: collect_incoming_data / found_terminator,
    *max_size* None or >= 0) or "messages" (``feed_messages``: handle_message,
    *max_size* an int >= 0).  ``steps`` is the operations so far as Python
    source, for a reproducer.
    """

    def __init__(
        self,
        mode: str = "collect",
        terminator: Any = b"\n",
        max_size: Optional[int] = None,
        call_get_terminator: bool = True,
        engines: Optional[tuple] = None,
    ):
        if engines is None:
            if compiled is None:
                raise RuntimeError("the compiled engine is not built")
            engines = (compiled, ENGINES["py"])
        if mode == "messages" and max_size is None:
            max_size = 1 << 20
        self.mode = mode
        self.channels = [Channel(engine, mode, _copy(terminator), max_size, call_get_terminator) for engine in engines]
        self.steps = [
            "driver = TwinDriver(mode=%r, terminator=%r, max_size=%r, call_get_terminator=%r)"
            % (mode, terminator, max_size, call_get_terminator)
        ]

    # -- operations -------------------------------------------------------------

    def feed(self, data: bytes, how: str = "bytes") -> None:
        self.steps.append("driver.feed(%r, %r)" % (data, how))
        outcomes = []
        for channel in self.channels:
            try:
                channel.feed(wrap(data, how))
            except Boom as exc:
                outcomes.append(("Boom", str(exc)))
            except (ValueError, TypeError) as exc:
                if not _expected_error(exc):
                    raise Unexpected(self._report("unexpected %s: %s" % (type(exc).__name__, exc))) from exc
                outcomes.append((type(exc).__name__, str(exc)))
            except Exception as exc:
                raise Unexpected(self._report("unexpected %s: %s" % (type(exc).__name__, exc))) from exc
            else:
                outcomes.append(None)
        if outcomes[0] != outcomes[1]:
            raise Mismatch(self._report("feed outcome: compiled %r, twin %r" % tuple(outcomes)))
        self.check()

    def set_terminator(self, value: Any) -> None:
        self.steps.append("driver.set_terminator(%r)" % (value,))
        for channel in self.channels:
            channel.terminator = _copy(value)

    def set_pending(self, data: bytes, how: str = "bytes") -> None:
        self.steps.append("driver.set_pending(%r, %r)" % (data, how))
        for channel in self.channels:
            channel.framer.pending = wrap(data, how)
        self.check()

    def set_max_size(self, value: Optional[int]) -> None:
        if self.mode == "messages" and value is None:
            value = 1 << 20
        self.steps.append("driver.set_max_size(%r)" % (value,))
        for channel in self.channels:
            channel.max_size = value

    def schedule(self, where: str, action: tuple) -> None:
        """Queue *action* for the next call of the callback *where* (see ``WHERES``)."""
        self.steps.append("driver.schedule(%r, %r)" % (where, action))
        for channel in self.channels:
            channel.actions.add(where, action)

    # -- checks -----------------------------------------------------------------

    def check(self) -> None:
        first, second = self.channels
        if first.events != second.events:
            index = next(
                (i for i, (a, b) in enumerate(zip(first.events, second.events)) if a != b),
                min(len(first.events), len(second.events)),
            )
            raise Mismatch(
                self._report(
                    "callbacks differ at call %d:\n  compiled: %r\n  twin:     %r"
                    % (index, first.events[index : index + 3], second.events[index : index + 3])
                )
            )
        if first.state() != second.state():
            raise Mismatch(
                self._report(
                    "state (pending, terminator, feeding, actions left) differs:\n"
                    "  compiled: %r\n  twin:     %r" % (first.state(), second.state())
                )
            )
        if first.framer.feeding:
            raise Mismatch(self._report("feeding is still true after feed returned"))

    def _report(self, message: str) -> str:
        return "%s\nreproducer:\n    %s" % (message, "\n    ".join(self.steps))


# -- fuzz input decoder ------------------------------------------------------------


class _Exhausted(Exception):
    pass


class _Input:
    """Consumes a fuzz input from the front, one decision at a time."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Exhausted
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, count: int) -> bytes:
        piece = self.data[self.pos : self.pos + count]
        self.pos += len(piece)
        return piece

    def chunk(self, flags: int) -> bytes:
        """Up to 63 bytes; mapped onto ``ALPHABET`` unless *flags* says raw."""
        piece = self.take(self.byte() % 64)
        if flags & 1:
            return piece
        return bytes(ALPHABET[b % len(ALPHABET)] for b in piece)

    def wrap(self, flags: int) -> str:
        return WRAPS[(flags >> 1) % len(WRAPS)]

    def terminator(self) -> Any:
        code = self.byte()
        kind = code % 10
        size = 1 + (code >> 4) % 4
        if kind == 0:
            return None
        if kind == 1:
            return b""
        if kind == 2:
            return 0
        if kind == 3:
            return self.byte() % 24
        if kind == 4:
            return (-1, 1 << 70, 300, 4096)[(code >> 4) % 4]
        raw = self.take(size) or b"\n"
        if kind == 9:
            return (bytearray, memoryview)[(code >> 6) % 2](raw)
        return bytes(ALPHABET[b % len(ALPHABET)] for b in raw)

    def max_size(self, mode: str) -> Optional[int]:
        code = self.byte()
        if mode == "collect" and code % 4 == 0:
            return None
        return (code >> 2) % 40 if code % 4 != 3 else (code >> 2) * 97


def run_program(data: bytes, engines: Optional[tuple] = None) -> TwinDriver:
    """Decode *data* into operations and play them on both engines (see module doc).

    Layout: one header byte (mode, call_get_terminator), the first terminator,
    the first max_size, then operations until the input runs out; each
    operation is one byte whose low 3 bits pick it and whose upper bits are
    its flags.  Any input decodes to something; what is cut short is dropped.
    """
    source = _Input(data)
    try:
        header = source.byte()
        mode = "messages" if header & 1 else "collect"
        driver = TwinDriver(mode, source.terminator(), source.max_size(mode), not header & 2, engines)
    except _Exhausted:
        return TwinDriver(engines=engines)
    try:
        while True:
            code = source.byte()
            op, flags = code & 7, code >> 3
            if op <= 2:
                driver.feed(source.chunk(flags), source.wrap(flags))
            elif op == 3:
                driver.set_terminator(source.terminator())
            elif op == 4:
                where = WHERES[flags % 3]
                kind = (flags // 3) % 5
                if kind == 0:
                    action = ("terminator", source.terminator())
                elif kind == 1:
                    extra = source.byte()
                    action = ("pending", source.chunk(extra), source.wrap(extra))
                elif kind == 2:
                    action = ("raise",)
                elif kind == 3:
                    extra = source.byte()
                    action = ("feed", source.chunk(extra), source.wrap(extra))
                else:
                    action = ("nothing",)
                driver.schedule(where, action)
            elif op == 5:
                driver.set_pending(source.chunk(flags), source.wrap(flags))
            elif op == 6:
                driver.set_max_size(source.max_size(driver.mode))
            else:
                # A long run of one byte: overflows small limits, spans reads.
                fill = ALPHABET[flags % len(ALPHABET)] if flags & 8 else b"x"[0]
                driver.feed(bytes([fill]) * (source.byte() * 8), "bytes")
    except _Exhausted:
        pass
    driver.check()
    return driver
