"""Framing workloads: known message streams fed in fixed-size reads, no sockets.

Each workload is a byte stream plus a *protocol* that decides, after every
message, what the next terminator is (a byte string, or a byte count for
length-prefixed data).  The protocol is the same object logic for every
implementation, so every row does the same work:

* asynchat-style rows (chatcore on each engine, and the legacy ``asynchat``
  this Python really has: the standard library's up to 3.11, row
  ``stdlib-asynchat``, or PyPI's verbatim copy on 3.12+, row ``pyasynchat``)
  run a handler whose ``found_terminator`` asks the protocol for the next
  terminator, fed through the real read path: ``handle_read()`` on a socket
  stand-in whose ``recv()`` returns the next read;
* the ``chatcore-messages`` row runs the protocol on ``message_chat`` (one
  ``handle_message`` call per message, the opt-in API for new code);
* the asyncio row drives ``StreamReader.readuntil``/``readexactly`` with the
  same protocol, fed with ``feed_data`` one read at a time;
* the ``lines16-any-eol`` workload is ``lines16``'s lines framed by the
  tuple ``(b"\\r\\n", b"\\n")`` (several terminators, chatcore's extension;
  asyncio's ``readuntil`` takes a tuple from Python 3.13), so that its rows
  over ``lines16``'s, measured in the same run, are what looking for two
  line endings costs over looking for one;
* the ``handler-floor`` row is the handler's own cost: the same handler (on
  chatcore's compiled engine where there is one), its
  ``collect_incoming_data`` and ``found_terminator`` called once per message
  on the stream split beforehand, no framing at all.  A framing row's time
  over the floor's is what the framing costs on top of the handler (left
  out for the large bodies, whose cost is copying, not callbacks).

After each run the message count and byte total are checked, so a fast wrong
answer fails instead of winning.

This module imports chatcore only by its public name, so the regression gate
can load this file from one tree and time another tree's chatcore with it;
for the same reason it also holds ``legacy_origin()``/``import_legacy()``,
which the echo benchmark uses too.
"""

import copy
import importlib.machinery
import os
import sys
import time
import warnings
from types import ModuleType
from typing import Any, Callable, NamedTuple, Optional, Union

import chatcore

Terminator = Union[bytes, int, tuple[bytes, ...]]

READ_SIZES = (4096, 65536)


class Protocol:
    """Counts messages and payload bytes, and names the next terminator."""

    first_terminator: Terminator = b"\r\n"

    def __init__(self, expected_messages: int):
        self.expected_messages = expected_messages
        self.messages = 0
        self.payload_bytes = 0

    @property
    def done(self) -> bool:
        return self.messages >= self.expected_messages

    def on_message(self, data: bytes) -> Terminator:
        self.messages += 1
        self.payload_bytes += len(data)
        return self.first_terminator


class AnyLineEnding(Protocol):
    """Lines ending in ``\\r\\n`` or in a bare ``\\n``, whichever comes first."""

    first_terminator = (b"\r\n", b"\n")


class SMTPBodies(Protocol):
    first_terminator = b"\r\n.\r\n"


class LengthPrefixed(Protocol):
    """A 4-byte big-endian length, then that many bytes of body: one message."""

    first_terminator = 4

    def __init__(self, expected_messages: int):
        super().__init__(expected_messages)
        self.in_header = True

    def on_message(self, data: bytes) -> Terminator:
        if self.in_header:
            self.in_header = False
            return int.from_bytes(data, "big")
        self.in_header = True
        self.messages += 1
        self.payload_bytes += len(data)
        return 4


class SingleBody(Protocol):
    """One body of a known size, read with an integer terminator."""

    def __init__(self, expected_messages: int, size: int):
        super().__init__(expected_messages)
        self.first_terminator = size


class Workload(NamedTuple):
    name: str
    description: str
    #: scale -> (stream, protocol factory, expected messages, expected payload bytes)
    build: Callable[[float], tuple[bytes, Callable[[], Protocol], int, int]]
    #: Whether the handler-floor row runs it: not for large bodies, whose cost
    #: is the copies the framing must make and whose floor (a callback pair
    #: per body, the body never copied) says nothing about them.
    has_floor: bool = True
    #: The workload framing the same stream with one terminator, for a tuple
    #: terminator's workload (only chatcore's rows and asyncio on 3.13+ run
    #: it): its rows over that workload's are the cost of the tuple.
    single_terminator_twin: Optional[str] = None


def _count(base: int, scale: float) -> int:
    return max(1, int(base * scale))


def _lines(scale: float):
    count = _count(1_000_000, scale)
    line = b"0123456789abcd\r\n"
    return line * count, lambda: Protocol(count), count, count * 14


def _lines_any_ending(scale: float):
    # lines16's lines and reads, a quarter as many (the comparison is per
    # message): the pure-Python engine's rows would take most of a run.
    stream, _, count, payload = _lines(scale / 4)
    return stream, lambda: AnyLineEnding(count), count, payload


def _headers(scale: float):
    count = _count(100_000, scale)
    lines = []
    for index in range(count):
        prefix = b"X-Header-%06d: " % index
        lines.append(prefix + b"v" * (198 - len(prefix)) + b"\r\n")
    return b"".join(lines), lambda: Protocol(count), count, count * 198


def _smtp_bodies(scale: float):
    count = _count(10_000, scale)
    text_line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = (text_line * (65536 // len(text_line) + 1))[: 65536 - 5]
    body = body[:-2] + b"\r\n"  # no accidental terminator inside
    message = body + b"\r\n.\r\n"
    return message * count, lambda: SMTPBodies(count), count, count * len(body)


def _length_prefixed(scale: float):
    count = _count(200_000, scale)
    parts = []
    total = 0
    for index in range(count):
        size = (index * 37) % 200 + 1  # 1..200 bytes; 0 would mean "no terminator"
        parts.append(size.to_bytes(4, "big") + b"r" * size)
        total += size
    return b"".join(parts), lambda: LengthPrefixed(count), count, total


def _big_body(scale: float):
    size = _count(64 << 20, scale)
    return b"\x00" * size, lambda: SingleBody(1, size), 1, size


WORKLOADS: dict[str, Workload] = {
    workload.name: workload
    for workload in [
        Workload("lines16", "1,000,000 lines of 16 bytes ending \\r\\n", _lines),
        Workload(
            "lines16-any-eol",
            "250,000 of lines16's lines, framed by (b'\\r\\n', b'\\n')",
            _lines_any_ending,
            has_floor=False,
            single_terminator_twin="lines16",
        ),
        Workload("headers200", "100,000 header lines of 200 bytes", _headers),
        Workload("smtp64k", "10,000 64 KiB bodies ending \\r\\n.\\r\\n", _smtp_bodies, has_floor=False),
        Workload("length-prefixed", "200,000 records: 4-byte length, then body", _length_prefixed),
        Workload("body64m", "one 64 MiB body read with an integer terminator", _big_body, has_floor=False),
    ]
}


class _ReplayedReads:
    """Just enough socket for ``dispatcher.__init__`` and ``recv()``: replays reads."""

    def __init__(self, reads: list[bytes]):
        self._reads = iter(reads)

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 0)

    def recv(self, size: int) -> bytes:
        return next(self._reads)


def _framing_handler(base: type[Any], read_size: int) -> type:
    """The one handler every asynchat-style row runs, on *base*."""

    class FramingHandler(base):  # type: ignore[misc]
        ac_in_buffer_size = read_size

        def __init__(self, sock: Any, protocol: Protocol):
            base.__init__(self, sock, map={})
            self.protocol = protocol
            self.set_terminator(protocol.first_terminator)

        def collect_incoming_data(self, data: bytes) -> None:
            self._collect_incoming_data(data)

        def found_terminator(self) -> None:
            self.set_terminator(self.protocol.on_message(self._get_data()))

    return FramingHandler


def _handle_read_runner(
    handler_for: Callable[[int], type],
) -> Callable[[list[bytes], int, Protocol], float]:
    """Times ``handle_read()`` once per read on the handler ``handler_for(read_size)``."""
    handlers: dict[int, type] = {}

    def run(reads: list[bytes], read_size: int, protocol: Protocol) -> float:
        handler_class = handlers.get(read_size)
        if handler_class is None:
            handler_class = handlers[read_size] = handler_for(read_size)
        channel = handler_class(_ReplayedReads(reads), protocol)
        handle_read = channel.handle_read
        start = time.perf_counter()
        for _ in range(len(reads)):
            handle_read()
        return time.perf_counter() - start

    return run


def _asynchat_runner(base: type) -> Callable[[list[bytes], int, Protocol], float]:
    return _handle_read_runner(lambda read_size: _framing_handler(base, read_size))


#: The row that times the handler alone (see the module docstring).
FLOOR = "handler-floor"


def _split_messages(stream: bytes, protocol: Protocol) -> list[bytes]:
    """The payload of each message of *stream* as *protocol* frames it, terminators removed.

    What the handler is given when each message arrives in one piece.  Equal
    pieces are one object, so the floor reads them from the cache, not from a
    store of pre-built objects many times the stream's size (a cost of this
    harness, not of the handler).
    """
    pieces = []
    distinct: dict[bytes, bytes] = {}
    terminator = protocol.first_terminator
    position = 0
    while position < len(stream):
        if isinstance(terminator, int):
            end = following = position + terminator
        elif isinstance(terminator, tuple):
            raise ValueError("the floor splits by one terminator (a tuple's workload has no floor)")
        else:
            end = stream.find(terminator, position)
            if end < 0:
                raise ValueError("the stream ends without a terminator %r" % terminator)
            following = end + len(terminator)
        piece = stream[position:end]
        if not piece:
            # asynchat never hands an empty piece to collect_incoming_data.
            raise ValueError("empty messages would make the floor call collect_incoming_data(b'')")
        pieces.append(distinct.setdefault(piece, piece))
        terminator = protocol.on_message(piece)
        position = following
    return pieces


def _floor_runner(base: type) -> Callable[[list[bytes], int, Protocol], float]:
    """Times the framing handler on *base* given each message whole: no framing engine."""
    handlers: dict[int, type] = {}
    # One workload at a time: its reads (kept, so their id stays theirs) and messages.
    split: dict[int, tuple[list[bytes], list[bytes]]] = {}

    def run(reads: list[bytes], read_size: int, protocol: Protocol) -> float:
        handler_class = handlers.get(read_size)
        if handler_class is None:
            handler_class = handlers[read_size] = _framing_handler(base, read_size)
        if id(reads) not in split:
            split.clear()
            split[id(reads)] = (reads, _split_messages(b"".join(reads), copy.copy(protocol)))
        pieces = split[id(reads)][1]
        channel = handler_class(_ReplayedReads([]), protocol)
        collect = channel.collect_incoming_data
        found = channel.found_terminator
        start = time.perf_counter()
        for piece in pieces:
            collect(piece)
            found()
        return time.perf_counter() - start

    return run


def runs_on(implementation: str, workload: str) -> bool:
    """Whether row *implementation* measures *workload*.

    The floor skips single bodies; a tuple terminator runs on chatcore's
    rows, and on asyncio's from Python 3.13 (whose ``readuntil`` takes a
    tuple), not on legacy asynchat (which has no such thing).
    """
    details = WORKLOADS[workload]
    if implementation == FLOOR:
        return details.has_floor
    if details.single_terminator_twin is not None:
        return implementation.startswith("chatcore") or (
            implementation == "asyncio-streams" and sys.version_info >= (3, 13)
        )
    return True


def _message_handler(read_size: int) -> type:
    """The same protocol on chatcore's one-callback-per-message API."""

    class MessageHandler(chatcore.message_chat):
        ac_in_buffer_size = read_size
        max_message_size = 1 << 30

        def __init__(self, sock: Any, protocol: Protocol):
            chatcore.message_chat.__init__(self, sock, map={})
            self.protocol = protocol
            self.terminator = protocol.first_terminator

        def handle_message(self, message: bytes) -> None:
            self.terminator = self.protocol.on_message(message)

    return MessageHandler


async def _read_messages(reader: Any, protocol: Protocol) -> None:
    terminator = protocol.first_terminator
    while not protocol.done:
        if isinstance(terminator, int):
            data = await reader.readexactly(terminator)
        elif isinstance(terminator, tuple):
            data = await reader.readuntil(terminator)
            # The one that matched: the longest the data ends with.
            ending = max((choice for choice in terminator if data.endswith(choice)), key=len)
            data = data[: -len(ending)]
        else:
            data = await reader.readuntil(terminator)
            data = data[: -len(terminator)]
        terminator = protocol.on_message(data)


async def _feed_streams(reads: list[bytes], protocol: Protocol) -> float:
    import asyncio

    reader = asyncio.StreamReader(limit=1 << 20)
    consumer = asyncio.ensure_future(_read_messages(reader, protocol))
    start = time.perf_counter()
    for data in reads:
        reader.feed_data(data)
        await asyncio.sleep(0)  # let the consumer take what is complete
    reader.feed_eof()
    await consumer
    return time.perf_counter() - start


def _asyncio_run(reads: list[bytes], read_size: int, protocol: Protocol) -> float:
    # Imported here: the regression gate loads this module under callgrind,
    # where importing asyncio alone costs seconds.
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_feed_streams(reads, protocol))
    finally:
        loop.close()


# --- The legacy modules this Python really has ----------------------------------

#: Where real ``asynchat``/``asyncore`` modules can come from: the standard
#: library (Python <= 3.11) or PyPI's verbatim copies, the distributions
#: pyasynchat and pyasyncore (the replacement a 3.12+ user installs).
STDLIB = "stdlib"
PYASYNCHAT = "pyasynchat"
_DISTRIBUTIONS = {"asynchat": "pyasynchat", "asyncore": "pyasyncore"}
#: The framing row of each origin.
LEGACY_ROWS = {STDLIB: "stdlib-asynchat", PYASYNCHAT: "pyasynchat"}


def _module_origin(name: str, path: str) -> Optional[str]:
    """STDLIB or PYASYNCHAT if *path* is module *name*'s file from there, else None.

    Decided by the file alone, not the module's name: chatcore's compat
    modules installed under the legacy names, or a stray ``asynchat.py`` on
    the path, are neither.
    """
    if not path:
        return None
    # Imported here, not at the top: the regression gate loads this module
    # under callgrind and never asks, and these imports cost seconds there.
    import importlib.metadata
    import sysconfig

    real = os.path.realpath(path)
    if os.path.dirname(real) == os.path.realpath(sysconfig.get_paths()["stdlib"]):
        return STDLIB
    try:
        distribution = importlib.metadata.distribution(_DISTRIBUTIONS[name])
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or ():
        if os.path.realpath(str(distribution.locate_file(file))) == real:
            return PYASYNCHAT
    return None


def legacy_origin() -> Optional[str]:
    """Where ``import asynchat, asyncore`` takes real legacy modules from here, or None.

    Nothing is imported, and ``sys.modules`` is not consulted (a process that
    called ``chatcore.compat.install()`` still reports what a fresh one gets):
    the answer is the files the path search finds.  None unless both modules
    come from the same origin.
    """
    origins = set()
    for name in ("asynchat", "asyncore"):
        spec = importlib.machinery.PathFinder.find_spec(name)
        origins.add(_module_origin(name, spec.origin or "") if spec is not None else None)
    return origins.pop() if len(origins) == 1 else None


def import_legacy() -> tuple[str, ModuleType, ModuleType]:
    """Import the real legacy modules: (origin, asynchat, asyncore).

    Whatever ``sys.modules`` holds under those names (chatcore's compat
    stand-ins after ``install()``, say) is looked past, and left as it was
    found: the modules imported here are held by reference only, so a later
    ``chatcore.compat.install()`` in the same process (which refuses to run
    beside foreign modules under those names) is not affected.  Raises
    ImportError when there are none, or when the import gives another file
    than the one ``legacy_origin()`` named, so a row labelled stdlib or
    pyasynchat always measured that code.
    """
    origin = legacy_origin()
    if origin is None:
        raise ImportError("neither the standard library's nor PyPI's asynchat/asyncore is installed here")
    names = ("asyncore", "asynchat")
    # What sys.modules holds under those names is set aside and put back; a
    # None entry, which blocks the import on purpose (as on an interpreter
    # without the modules), stays and makes the import fail.
    held = {name: sys.modules.pop(name) for name in names if sys.modules.get(name) is not None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import asynchat
            import asyncore
    finally:
        for name in names:
            if sys.modules.get(name) is not None:
                del sys.modules[name]  # imported here: held by reference only
        sys.modules.update(held)
    for name, module in (("asynchat", asynchat), ("asyncore", asyncore)):
        path = getattr(module, "__file__", None) or ""
        if _module_origin(name, path) != origin:
            raise ImportError("`import %s` gave %s, not the %s copy" % (name, path or module, origin))
    return origin, asynchat, asyncore


def _legacy_asynchat() -> Optional[tuple[str, type]]:
    try:
        origin, asynchat, _ = import_legacy()
    except ImportError:
        return None  # none here
    return LEGACY_ROWS[origin], asynchat.async_chat


Runner = Callable[[list[bytes], int, Protocol], float]


def engines() -> dict[str, ModuleType]:
    """chatcore's framing engines importable here, compiled first: ``{"cython": ..., "python": ...}``.

    The names are those of ``chatcore.implementation``.  Both are looked up,
    whichever one the default picks, so a benchmark can run each engine in
    one process; a build made with CHATCORE_NO_EXTENSIONS=1 has no "cython".
    """
    found: dict[str, ModuleType] = {}
    try:
        from chatcore import _framing_c

        found["cython"] = _framing_c
    except ImportError:
        pass
    try:
        from chatcore import _framing_py

        found["python"] = _framing_py
    except ImportError:
        pass
    return found


def chatcore_implementations() -> dict[str, Runner]:
    """chatcore's ``async_chat`` on each engine it has here, and the handler floor, by row name."""
    found: dict[str, Runner] = {}
    for name, engine in engines().items():
        found["chatcore-" + name] = _asynchat_runner(type("async_chat", (chatcore.async_chat,), {"_engine": engine}))
        if len(found) == 1:
            # The handler's own cost, on the engine the first row (the compiled one, if any) uses.
            found[FLOOR] = _floor_runner(type("async_chat", (chatcore.async_chat,), {"_engine": engine}))
    return found


def implementations() -> dict[str, Runner]:
    """Runnable implementations on this Python, by row name."""
    found = chatcore_implementations()
    if hasattr(chatcore, "message_chat"):
        # One callback per message (new code), on the default engine.
        found["chatcore-messages"] = _handle_read_runner(_message_handler)
    legacy = _legacy_asynchat()
    if legacy is not None:
        row, async_chat = legacy
        found[row] = _asynchat_runner(async_chat)
    found["asyncio-streams"] = _asyncio_run
    return found


class Measurement(NamedTuple):
    seconds: float
    messages: int
    payload_bytes: int
    stream_bytes: int


_reads_cache: dict[tuple[str, float, int], tuple[list[bytes], Callable[[], Protocol], int, int, int]] = {}


def prepared_reads(workload: str, scale: float, read_size: int):
    """(reads, protocol factory, expected messages, expected bytes, stream size), cached."""
    key = (workload, scale, read_size)
    if key not in _reads_cache:
        _reads_cache.clear()  # one workload's reads at a time: they can be large
        stream, factory, messages, payload = WORKLOADS[workload].build(scale)
        reads = [stream[i : i + read_size] for i in range(0, len(stream), read_size)]
        _reads_cache[key] = (reads, factory, messages, payload, len(stream))
    return _reads_cache[key]


def run_once(
    workload: str,
    implementation: str,
    read_size: int,
    scale: float = 1.0,
    runner: Optional[Callable[[list[bytes], int, Protocol], float]] = None,
) -> Measurement:
    """Time one pass of *workload* through *implementation* and check its result."""
    reads, factory, messages, payload, stream_size = prepared_reads(workload, scale, read_size)
    if runner is None:
        runner = implementations()[implementation]
    protocol = factory()
    seconds = runner(reads, read_size, protocol)
    if protocol.messages != messages or protocol.payload_bytes != payload:
        raise AssertionError(
            "%s on %s gave %d messages / %d bytes, expected %d / %d"
            % (implementation, workload, protocol.messages, protocol.payload_bytes, messages, payload)
        )
    return Measurement(seconds, messages, payload, stream_size)
