"""Loopback echo-server benchmark: chatcore against legacy asyncore, asyncio and uvloop.

Every server echoes each received line (terminator ``b"\\n"``) back at once,
with one write per line, and runs in its own process so that it, not the
client, is what gets measured:

* ``chatcore``: a ``chatcore.async_chat`` subclass whose ``found_terminator``
  does ``self.push(line + b"\\n")`` (the push-per-line handler legacy code
  has), served by ``chatcore.loop``, with ``ac_coalesce_sends = True`` (the
  default for new code: pushes made during a loop turn go out at its end);
* ``chatcore-compat``: the same handler on ``chatcore.compat.asynchat.async_chat``
  served by ``chatcore.compat.asyncore.loop`` (what ``chatcore.compat.install()``
  gives a legacy program), with ``ac_coalesce_sends = False`` (the compat
  default: each push handed to the socket at once, as stdlib does);
* ``stdlib``: the very same handler body built on stdlib ``asynchat.async_chat``
  and served by ``asyncore.loop`` (Python <= 3.11 only);
* ``pyasynchat``: the same on PyPI's verbatim copies of those modules
  (``pyasynchat``/``pyasyncore``), the alternative a 3.12+ user has, when
  they are installed;
* ``asyncio``: a ``Protocol`` whose ``data_received`` splits lines and calls
  ``transport.write`` once per line, on asyncio's default loop;
* ``uvloop``: the same ``Protocol`` on uvloop's loop, when uvloop is installed.

Each framework keeps its own socket defaults (asyncio and uvloop turn Nagle's
algorithm off, asyncore never did), since that is what its users get.

Before it listens, an asyncore-style server measures its handler's send
timing (``probe_send_timing``: does a push made in ``found_terminator`` reach
the peer before the handler returns?) and reports it with the class's
``ac_coalesce_sends``; a chatcore server whose measured timing contradicts the
mode its row names refuses to start, so a row cannot silently measure the
other mode.  A chatcore without that attribute is reported as "unknown".

The clients run in the benchmarking process on plain non-blocking sockets and
``selectors``:

* pipelined: N connections each send a fixed number of lines in large batches,
  keeping at most ``PIPELINE_WINDOW`` bytes in flight, and every connection's
  echoed stream is checked (length and running CRC-32) against what it sent;
* ping-pong: one connection, sequential round trips of one line each, every
  echo compared with its line; reports p50 and p99 round-trip latency.

Both clients open their connections through a *connector* (plain TCP by
default; ``chatcore.benchmark.tls`` passes one that does a TLS handshake
first, and its servers are these ones over TLS).

``run_echo`` does one whole run: server process, client, checks, clean-up.
The server side is also a command, used by ``EchoServerProcess``::

    python -m chatcore.benchmark.echo serve --server chatcore --port-file PATH

It binds 127.0.0.1 on a free port, writes the port (with which chatcore it
imported and the send timing it measured) to PATH as JSON, and serves until
it is killed, its stdin reaches end of file (the parent closed the pipe or
died), or ``--max-seconds`` pass.
"""

import dataclasses
import importlib.util
import os
import select
import selectors
import socket
import ssl
import sys
import time
import zlib
from typing import Any, Callable, Optional, Union

import chatcore

from . import framing
from .inprocess import TERMINATOR, chatcore_under_legacy_names, line_echo_handler_class
from .serverproc import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_TIMEOUT,
    LISTEN_BACKLOG,
    LOOPBACK,
    BenchmarkError,
    BenchmarkTimeoutError,
    ServerProcess,
    VerificationError,
    connect,
    per_second,
    percentile,
    raise_descriptor_limit,
    resident_bytes,
    send_rest,
    serve_main,
    start_lifeline,
    write_port_file,
)

__all__ = [
    "CHATCORE_SEND_MODES",
    "DEFAULT_TIMEOUT",
    "FAULT_SERVERS",
    "LEGACY_SERVERS",
    "MODES",
    "PIPELINE_WINDOW",
    "SENT_AT_ONCE",
    "SENT_AT_TURN_END",
    "SERVERS",
    "WOULD_BLOCK",
    "ClientMeasurement",
    "Connector",
    "EchoBenchmarkError",
    "EchoResult",
    "EchoServerProcess",
    "EchoStreamCheck",
    "EchoTimeoutError",
    "EchoVerificationError",
    "PingPongClient",
    "PipelinedClient",
    "asyncore_modules",
    "available_servers",
    "checked_send_timing",
    "expected_stream",
    "line_echo_handler_class",
    "main",
    "probe_send_timing",
    "run_echo",
    "send_mode",
    "serve",
    "serve_asyncio_style",
]

MODES = ("pipelined", "ping-pong")
#: Bytes a pipelined connection keeps sent but not yet echoed, at most.  Large
#: enough that the client writes in big batches, small enough to stay well
#: inside the loopback socket buffers, so a server is never blocked by the client.
PIPELINE_WINDOW = 128 * 1024
#: Servers on select(), which cannot hold thousands of connections (no
#: descriptor above 1024; on Windows, where chatcore's loop is select() too,
#: no more than 512 sockets), and how many idle connections they are given.
SELECT_BOUND_SERVERS = (
    ("stdlib", "pyasynchat", "chatcore", "chatcore-compat") if sys.platform == "win32" else ("stdlib", "pyasynchat")
)
SELECT_IDLE_LIMIT = 400

#: Every echo server this module knows; ``available_servers()`` says which run here.
SERVERS = ("chatcore", "chatcore-compat", "stdlib", "pyasynchat", "asyncio", "uvloop")
#: The chatcore servers and the ``ac_coalesce_sends`` each sets on its handler class.
CHATCORE_SEND_MODES = {"chatcore": True, "chatcore-compat": False}
#: The legacy servers, by the origin of the modules they run (see framing.legacy_origin).
LEGACY_SERVERS = {framing.STDLIB: "stdlib", framing.PYASYNCHAT: "pyasynchat"}
#: What ``probe_send_timing`` measures: a push reached the peer before push()
#: returned, or only once the loop turn ended.
SENT_AT_ONCE = "at once"
SENT_AT_TURN_END = "at turn end"
#: Servers that misbehave on purpose, so the harness's own tests can show that
#: it notices; accepted by run_echo and ``serve`` but never listed as available.
FAULT_SERVERS = ("fault:corrupt-echo", "fault:silent", "fault:never-ready", "fault:exit-early")
#: What a non-blocking client socket raises when it cannot go on now: a TLS
#: socket's want-read and want-write are not BlockingIOError.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: How a client opens a connection: ``connector(port, deadline)``, a
#: connected non-blocking socket (``serverproc.connect`` for plain TCP).
Connector = Callable[[int, float], socket.socket]


#: The shared benchmark errors (chatcore.benchmark.serverproc) under this
#: module's older names: a failed run, one past its deadline, a wrong echo.
EchoBenchmarkError = BenchmarkError
EchoTimeoutError = BenchmarkTimeoutError
EchoVerificationError = VerificationError


@dataclasses.dataclass
class EchoResult:
    """The outcome of one ``run_echo``.

    ``messages`` counts echoed lines (round trips in ping-pong mode), ``bytes``
    the bytes echoed back (one direction); ``mb_per_s`` is in 10**6 bytes per
    second.  ``p50_us``/``p99_us`` are ping-pong round-trip latencies and None
    for pipelined runs.  ``implementation`` is ``chatcore.implementation`` in
    the server process for a chatcore server (the framing engine it ran on),
    None for the others;
    ``server_detail`` says what exactly served.  ``server_returncode`` is the
    server process's exit status, set once it is gone.  ``send_timing`` is
    what the server measured before listening (SENT_AT_ONCE or
    SENT_AT_TURN_END; None for asyncio/uvloop), ``ac_coalesce_sends`` the
    value its handler class runs with (True/False, "unknown" on a chatcore
    without that attribute, None for servers that are not chatcore).
    """

    server: str
    mode: str
    connections: int
    messages: int
    bytes: int
    seconds: float
    messages_per_s: float
    mb_per_s: float
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None
    implementation: Optional[str] = None
    server_detail: Optional[str] = None
    server_pid: Optional[int] = None
    server_returncode: Optional[int] = None
    #: Connections held open and silent during the run, and the server's
    #: resident memory per such connection (Linux only; None elsewhere).
    idle_connections: int = 0
    rss_per_idle_connection: Optional[float] = None
    send_timing: Optional[str] = None
    ac_coalesce_sends: Union[bool, str, None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_servers() -> list[str]:
    """The echo servers this Python can run, chatcore's first."""
    servers = list(CHATCORE_SEND_MODES)
    # Not imported here (chatcore.compat.install() may have put chatcore's
    # stand-ins under those names in this process): found by file, and the
    # server process checks what it imports.
    origin = framing.legacy_origin()
    if origin is not None:
        servers.append(LEGACY_SERVERS[origin])
    servers.append("asyncio")
    if importlib.util.find_spec("uvloop") is not None:
        servers.append("uvloop")
    return servers


# --- The servers (they run in the ``serve`` subprocess) ----------------------


def _listener_class(dispatcher_base: type[Any]) -> type[Any]:
    """A listening dispatcher on 127.0.0.1 that gives each connection to a handler."""

    class EchoListener(dispatcher_base):  # type: ignore[misc]
        def __init__(self, handler_class: type[Any], channel_map: dict[int, Any]):
            dispatcher_base.__init__(self, map=channel_map)
            self.handler_class = handler_class
            self.channel_map = channel_map
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind((LOOPBACK, 0))
            self.listen(LISTEN_BACKLOG)

        def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
            self.handler_class(sock, map=self.channel_map)

    return EchoListener


def _fault_handler_class(fault: str) -> type[Any]:
    """The chatcore echo handler with one deliberate defect."""
    base = line_echo_handler_class(chatcore.async_chat)

    class FaultyEchoHandler(base):  # type: ignore[misc, valid-type]
        lines_pushed = 0

        def push(self, data: bytes) -> None:
            self.lines_pushed += 1
            if fault == "fault:silent":
                return
            if self.lines_pushed == 3:
                # Same length, one byte changed: only a content check catches it.
                data = b"!" + data[1:] if len(data) > 1 else b"!"
            base.push(self, data)

    return FaultyEchoHandler


def probe_send_timing(handler_class: type[Any], loop: Callable[..., None], timeout: float = 5.0) -> str:
    """Measure when a push made in ``found_terminator`` of *handler_class* reaches the peer.

    One line goes through a channel of *handler_class* on a private socket
    pair, served by *loop* (an asyncore-style ``loop``); right after the
    handler's own ``found_terminator`` has pushed the echo, the peer looks
    for it.  SENT_AT_ONCE if it is there (stdlib's timing), SENT_AT_TURN_END
    if it arrives only after the turn.  The echo must arrive whole in either
    case, within *timeout* seconds.
    """
    line = b"send-timing probe" + TERMINATOR
    seen: list[bool] = []
    peer, ours = socket.socketpair()
    # AF_UNIX delivers a send to the peer's queue before send() returns; the
    # short wait only covers a platform where the pair is emulated over TCP.
    peer_wait = 0.05

    class Probe(handler_class):  # type: ignore[misc]
        def found_terminator(self) -> None:
            handler_class.found_terminator(self)
            seen.append(bool(select.select([peer], [], [], peer_wait)[0]))

    channel_map: dict[int, Any] = {}
    try:
        peer.settimeout(timeout)
        channel = Probe(ours, map=channel_map)
        peer.sendall(line)
        deadline = time.monotonic() + timeout
        echoed = b""
        while len(echoed) < len(line):
            if time.monotonic() >= deadline:
                raise EchoBenchmarkError("send-timing probe: no echo within %g s (got %r)" % (timeout, echoed))
            loop(timeout=0.05, map=channel_map, count=1)
            if seen and select.select([peer], [], [], 0)[0]:
                echoed += peer.recv(4096)
        if echoed != line:
            raise EchoBenchmarkError("send-timing probe: sent %r, got back %r" % (line, echoed))
        channel.close()
    finally:
        for sock in (peer, ours):
            sock.close()
    return SENT_AT_ONCE if seen[0] else SENT_AT_TURN_END


def send_mode(
    chat_base: type[Any], expected: Optional[bool], measured: str, name: Optional[str] = None
) -> Union[bool, str, None]:
    """The ``ac_coalesce_sends`` a server really runs with, checked against *measured*.

    *expected* is what the row's handler class sets (None: not a chatcore
    row, nothing to check).  Where *chat_base* has no such attribute (a
    chatcore from before it existed) the answer is "unknown": the row then
    measures whatever that chatcore does, and *measured* says what.  Where it
    has, a timing that contradicts *expected* raises EchoBenchmarkError
    (naming the class *name*, by default its qualified name).
    """
    if expected is None:
        return None
    if not hasattr(chat_base, "ac_coalesce_sends"):
        return "unknown"
    wanted = SENT_AT_TURN_END if expected else SENT_AT_ONCE
    if measured != wanted:
        raise EchoBenchmarkError(
            "%s with ac_coalesce_sends=%r sent a push %s, not %s: this row would measure the other mode"
            % (name or chat_base.__qualname__, expected, measured, wanted)
        )
    return expected


def asyncore_modules(server: str) -> tuple[Any, Any, str]:
    """The ``(asynchat, asyncore)`` an asyncore-style server row runs on, and what they are.

    A legacy row (``stdlib``, ``pyasynchat``) gets the real modules (refused
    where this Python's are another origin's); ``chatcore-compat`` gets what
    ``chatcore.compat.install()`` puts under those names, installed here, so
    call this in a server process only; any other server gets chatcore's own
    API under those names (``inprocess.chatcore_under_legacy_names``).
    """
    python = "Python %s" % sys.version.split()[0]
    if server in LEGACY_SERVERS.values():
        origin, asynchat, asyncore = framing.import_legacy()
        if LEGACY_SERVERS[origin] != server:
            raise RuntimeError("server %r asked for, but this Python's asynchat is %s's" % (server, origin))
        if origin == framing.STDLIB:
            return asynchat, asyncore, "stdlib asynchat/asyncore, %s" % python
        import importlib.metadata

        return (
            asynchat,
            asyncore,
            "pyasynchat %s / pyasyncore %s, %s"
            % (importlib.metadata.version("pyasynchat"), importlib.metadata.version("pyasyncore"), python),
        )
    if server == "chatcore-compat":
        import chatcore.compat

        chatcore.compat.install()
        return (
            sys.modules["asynchat"],
            sys.modules["asyncore"],
            "chatcore.compat.asynchat.async_chat (chatcore.compat.install())",
        )
    asynchat, asyncore = chatcore_under_legacy_names()
    return asynchat, asyncore, "chatcore.async_chat"


def checked_send_timing(
    server: str, handler_class: type[Any], chat_base: type[Any], loop: Callable[..., None], detail: str
) -> tuple[str, Union[bool, str, None], str]:
    """Probe *handler_class* (built on *chat_base*, served by *loop*) before row *server* listens.

    Returns the measured timing, the ``ac_coalesce_sends`` the row runs with
    (``send_mode``: EchoBenchmarkError if the timing contradicts the mode a
    chatcore row names) and *detail*, for a chatcore row extended with
    chatcore's version, engine, send mode and timing.
    """
    expected = CHATCORE_SEND_MODES.get(server)
    timing = probe_send_timing(handler_class, loop)
    coalesce = send_mode(chat_base, expected, timing, detail)
    if expected is not None:
        detail = "chatcore %s (%s engine), %s, ac_coalesce_sends=%s, pushes sent %s, Python %s" % (
            chatcore.__version__,
            chatcore.implementation,
            detail,
            coalesce,
            timing,
            sys.version.split()[0],
        )
    return timing, coalesce, detail


def _serve_asyncore_style(server: str, announce: Callable[..., None]) -> None:
    python = "Python %s" % sys.version.split()[0]
    asynchat, asyncore, detail = asyncore_modules(server)
    chat_base, dispatcher_base, serve_forever = asynchat.async_chat, asyncore.dispatcher, asyncore.loop
    timing: Optional[str] = None
    coalesce: Union[bool, str, None] = None
    if server in FAULT_SERVERS:
        # These test the harness; a silent one could not even pass the probe.
        handler_class = _fault_handler_class(server)
        detail = "chatcore %s (%s engine), deliberately faulty handler, %s" % (
            chatcore.__version__,
            chatcore.implementation,
            python,
        )
    else:
        handler_class = line_echo_handler_class(chat_base, CHATCORE_SEND_MODES.get(server))
        timing, coalesce, detail = checked_send_timing(server, handler_class, chat_base, serve_forever, detail)
    listener_class = _listener_class(dispatcher_base)
    channel_map: dict[int, Any] = {}
    listener = listener_class(handler_class, channel_map)
    announce(listener.socket.getsockname()[1], detail, send_timing=timing, ac_coalesce_sends=coalesce)
    # Both loops are called the same way legacy code calls them: select
    # semantics; the listener keeps the map non-empty, so this never returns.
    serve_forever(timeout=1.0, map=channel_map)


class LineEchoProtocol:
    """asyncio echo protocol: one ``transport.write`` per complete line."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.partial_line = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.partial_line:
            data = self.partial_line + data
        write = self.transport.write
        find = data.find
        start = 0
        end = find(TERMINATOR)
        while end >= 0:
            write(data[start : end + 1])
            start = end + 1
            end = find(TERMINATOR, start)
        self.partial_line = data[start:]

    def eof_received(self) -> None:
        return None  # close our side too

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.transport = None

    # The flow-control callbacks asyncio may call; the client bounds what is in flight.
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def serve_asyncio_style(
    server: str, announce: Callable[[int, str], None], ssl_context: Optional[ssl.SSLContext] = None
) -> None:
    """Serve ``LineEchoProtocol`` on asyncio's loop, or uvloop's for *server* "uvloop", until the process ends.

    With *ssl_context* the connections are TLS (the loop's own TLS transport).
    """
    import asyncio

    if server == "uvloop":
        import uvloop

        event_loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        detail = "uvloop %s, Python %s" % (getattr(uvloop, "__version__", "?"), sys.version.split()[0])
    else:
        event_loop = asyncio.new_event_loop()
        detail = "asyncio %s, Python %s" % (type(event_loop).__name__, sys.version.split()[0])

    async def serve() -> None:
        # LineEchoProtocol is an asyncio protocol by shape, not by base class.
        listening = await event_loop.create_server(
            LineEchoProtocol,  # type: ignore[arg-type]
            LOOPBACK,
            0,
            backlog=LISTEN_BACKLOG,
            ssl=ssl_context,
        )
        announce(listening.sockets[0].getsockname()[1], detail)
        await event_loop.create_future()  # forever: the lifeline ends the process

    try:
        event_loop.run_until_complete(serve())
    finally:
        event_loop.close()


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run echo server *server* until the process is ended; see the module docstring."""
    start_lifeline(max_seconds, watch_stdin, "echo server")
    raise_descriptor_limit(1 << 16)

    def announce(
        port: int, detail: str, send_timing: Optional[str] = None, ac_coalesce_sends: Union[bool, str, None] = None
    ) -> None:
        write_port_file(
            port_file,
            port,
            server,
            detail,
            serves_chatcore=server in CHATCORE_SEND_MODES or server in FAULT_SERVERS,
            send_timing=send_timing,
            ac_coalesce_sends=ac_coalesce_sends,
        )

    if server == "fault:never-ready":
        while True:
            time.sleep(60)
    if server == "fault:exit-early":
        raise RuntimeError("echo server fault:exit-early refuses to start")
    if server in ("asyncio", "uvloop"):
        serve_asyncio_style(server, announce)
    else:
        _serve_asyncore_style(server, announce)


# --- The server process, seen from the benchmark -----------------------------


class EchoServerProcess(ServerProcess):
    """An echo server in a child process running this chatcore, as a context manager.

    ``start()`` returns once the server listens (or raises within
    *startup_timeout*); ``stop()`` ends and reaps the process, and is safe to
    call at any time, any number of times.
    """

    module = "chatcore.benchmark.echo"
    label = "echo server"
    servers: tuple[str, ...] = SERVERS
    fault_servers: tuple[str, ...] = FAULT_SERVERS
    available_servers = staticmethod(available_servers)

    def connector(self) -> Connector:
        """How a client connects to this server (once started): plain TCP."""
        return connect


# --- The clients ---------------------------------------------------------------


def expected_stream(connection: int, lines: int, line_size: int) -> bytes:
    """*lines* distinct lines of *line_size* bytes (terminator included) for one connection.

    Each line carries the connection number and the line index in hex, so a
    line echoed twice, dropped, reordered or sent to the wrong connection
    changes the stream.  Indexes wrap when *line_size* is too small to hold them.
    """
    if line_size < 1:
        raise ValueError("line_size must be at least 1 (the terminator), got %d" % line_size)
    if line_size == 1:
        return TERMINATOR * lines
    prefix = b"%x:" % connection
    width = line_size - 1 - len(prefix)
    if width < 1:
        prefix, width = b"", line_size - 1
    template = prefix + b"%0" + str(width).encode() + b"x" + TERMINATOR
    if lines <= 16**width:
        return b"".join(map(template.__mod__, range(lines)))
    modulus = 16**width
    return b"".join([template % (index % modulus) for index in range(lines)])


class EchoStreamCheck:
    """Compares, on the fly, what a connection receives with what it sent.

    Only the length and a running CRC-32 are kept, so checking costs one
    ``zlib.crc32`` call per received chunk and no copy.
    """

    __slots__ = ("label", "expected_length", "expected_crc", "received", "received_crc")

    def __init__(self, label: str, expected: bytes):
        self.label = label
        self.expected_length = len(expected)
        self.expected_crc = zlib.crc32(expected)
        self.received = 0
        self.received_crc = 0

    def feed(self, chunk: Any) -> bool:
        """Account for a received chunk; True once everything expected has arrived."""
        self.received_crc = zlib.crc32(chunk, self.received_crc)
        self.received += len(chunk)
        if self.received > self.expected_length:
            raise EchoVerificationError(
                "%s: received %d bytes, more than the %d it sent" % (self.label, self.received, self.expected_length)
            )
        return self.received == self.expected_length

    def verify(self) -> None:
        """Raise EchoVerificationError unless the received stream equals the sent one."""
        if self.received != self.expected_length:
            raise EchoVerificationError(
                "%s: received %d of the %d bytes it sent" % (self.label, self.received, self.expected_length)
            )
        if self.received_crc != self.expected_crc:
            raise EchoVerificationError(
                "%s: the echoed bytes differ from the sent ones (crc32 %08x, expected %08x)"
                % (self.label, self.received_crc, self.expected_crc)
            )


@dataclasses.dataclass
class ClientMeasurement:
    """What a client run measured (the server side is added by run_echo)."""

    mode: str
    connections: int
    messages: int
    bytes: int
    seconds: float
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None


def open_idle_connections(port: int, count: int, deadline: float) -> list[socket.socket]:
    """*count* connected, silent sockets to the server, opened in batches."""
    sockets: list[socket.socket] = []
    try:
        for start in range(0, count, 256):
            batch = []
            for _ in range(min(256, count - start)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setblocking(False)
                sock.connect_ex((LOOPBACK, port))
                batch.append(sock)
            with selectors.DefaultSelector() as selector:
                for sock in batch:
                    selector.register(sock, selectors.EVENT_WRITE)
                waiting = len(batch)
                while waiting:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise EchoTimeoutError("opening %d idle connections took too long" % count)
                    for key, _ in selector.select(remaining):
                        error = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                        if error:
                            raise OSError(error, "idle connection failed: %s" % os.strerror(error))
                        selector.unregister(key.fileobj)
                        waiting -= 1
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _PipelinedConnection:
    __slots__ = ("sock", "stream", "total", "sent", "check", "waiting_to_write")

    def __init__(self, sock: socket.socket, stream: bytes, check: EchoStreamCheck):
        self.sock = sock
        self.stream = memoryview(stream)
        self.total = len(stream)
        self.sent = 0
        self.check = check
        self.waiting_to_write = False


class PipelinedClient:
    """N connections each echoing *lines* lines, a window of bytes in flight.

    Construction generates the streams and connects (not part of the
    measurement); ``run()`` sends, receives, checks and closes the sockets.
    """

    def __init__(
        self,
        port: int,
        connections: int,
        lines: int,
        line_size: int = 16,
        timeout: float = DEFAULT_TIMEOUT,
        window: int = PIPELINE_WINDOW,
        connector: Connector = connect,
    ):
        if connections < 1 or lines < 1:
            raise ValueError("connections and lines must be at least 1")
        self.lines = lines
        self.line_size = line_size
        # The server echoes only whole lines: a window under two lines could
        # leave a partial line in flight with no refill due, and stall.
        self.window = max(window, 2 * line_size)
        self.connections: list[_PipelinedConnection] = []
        deadline = time.monotonic() + timeout
        try:
            for index in range(connections):
                stream = expected_stream(index, lines, line_size)
                check = EchoStreamCheck("connection %d" % index, stream)
                self.connections.append(_PipelinedConnection(connector(port, deadline), stream, check))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for connection in self.connections:
            connection.sock.close()

    def _send_more(self, selector: selectors.BaseSelector, connection: _PipelinedConnection) -> None:
        end = min(connection.total, connection.check.received + self.window)
        if end > connection.sent:
            try:
                connection.sent += connection.sock.send(connection.stream[connection.sent : end])
            except WOULD_BLOCK:
                pass
            except OSError as error:
                raise EchoBenchmarkError("%s: %s" % (connection.check.label, error)) from error
        # Write interest only while the socket buffer is full, to save system calls.
        blocked = connection.sent < end
        if blocked != connection.waiting_to_write:
            connection.waiting_to_write = blocked
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if blocked else 0)
            selector.modify(connection.sock, events, connection)

    def _progress(self) -> str:
        return ", ".join(
            "connection %d: sent %d, echoed %d of %d bytes"
            % (index, connection.sent, connection.check.received, connection.total)
            for index, connection in enumerate(self.connections)
        )

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> ClientMeasurement:
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        receive_buffer = bytearray(256 * 1024)
        receive_view = memoryview(receive_buffer)
        # Top a connection up once half its window has come back: big sends.
        refill_level = self.window // 2
        try:
            for connection in self.connections:
                selector.register(connection.sock, selectors.EVENT_READ, connection)
            unfinished = len(self.connections)
            started = time.perf_counter()
            for connection in self.connections:
                self._send_more(selector, connection)
            while unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EchoTimeoutError(
                        "pipelined run did not finish within %.3g s (%s)" % (timeout, self._progress())
                    )
                for key, mask in selector.select(min(remaining, 1.0)):
                    connection = key.data
                    if mask & selectors.EVENT_READ:
                        try:
                            count = connection.sock.recv_into(receive_buffer)
                        except WOULD_BLOCK:
                            count = -1
                        except OSError as error:
                            raise EchoBenchmarkError("%s: %s" % (connection.check.label, error)) from error
                        if count == 0:
                            raise EchoBenchmarkError(
                                "%s: the server closed the connection (%s)" % (connection.check.label, self._progress())
                            )
                        if count > 0:
                            if connection.check.feed(receive_view[:count]):
                                selector.unregister(connection.sock)
                                unfinished -= 1
                                continue
                            if (
                                connection.sent < connection.total
                                and not connection.waiting_to_write
                                and connection.sent - connection.check.received <= refill_level
                            ):
                                self._send_more(selector, connection)
                    if mask & selectors.EVENT_WRITE:
                        self._send_more(selector, connection)
            seconds = time.perf_counter() - started
        finally:
            selector.close()
            self.close()
        for connection in self.connections:
            connection.check.verify()
        count = len(self.connections)
        return ClientMeasurement("pipelined", count, count * self.lines, count * self.lines * self.line_size, seconds)


class PingPongClient:
    """One connection, *rounds* sequential round trips of one line each.

    Construction prepares the lines and connects; ``run()`` measures and closes.
    """

    def __init__(
        self,
        port: int,
        rounds: int,
        line_size: int = 16,
        timeout: float = DEFAULT_TIMEOUT,
        connector: Connector = connect,
    ):
        if rounds < 1:
            raise ValueError("rounds must be at least 1")
        stream = expected_stream(0, rounds, line_size)
        self.line_size = line_size
        self.lines = [stream[start : start + line_size] for start in range(0, len(stream), line_size)]
        self.sock = connector(port, time.monotonic() + timeout)

    def close(self) -> None:
        self.sock.close()

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> ClientMeasurement:
        deadline = time.monotonic() + timeout
        sock = self.sock
        size = self.line_size
        # Room for more than one line, so a surplus echo is seen, not left unread.
        receive_buffer = bytearray(size + 4096)
        receive_view = memoryview(receive_buffer)
        latencies_ns: list[int] = []
        clock_ns = time.perf_counter_ns
        monotonic = time.monotonic
        selector = selectors.DefaultSelector()
        try:
            selector.register(sock, selectors.EVENT_READ)
            wait = selector.select
            started = time.perf_counter()
            for round_number, line in enumerate(self.lines):
                sent_at = clock_ns()
                try:
                    sent = sock.send(line)
                except WOULD_BLOCK:
                    sent = 0
                except OSError as error:
                    raise EchoBenchmarkError("ping-pong round trip %d: %s" % (round_number, error)) from error
                if sent < size:
                    send_rest(sock, line, sent, deadline)
                received = 0
                while received < size:
                    # The echo cannot be there yet: wait first, saving a failed recv.
                    remaining = deadline - monotonic()
                    if remaining <= 0 or not wait(remaining):
                        raise EchoTimeoutError(
                            "ping-pong run did not finish within %.3g s: %d of %d round trips done"
                            % (timeout, round_number, len(self.lines))
                        )
                    try:
                        count = sock.recv_into(receive_view[received:])
                    except WOULD_BLOCK:
                        continue
                    except OSError as error:
                        raise EchoBenchmarkError("ping-pong round trip %d: %s" % (round_number, error)) from error
                    if count == 0:
                        raise EchoBenchmarkError(
                            "the server closed the connection after %d of %d round trips"
                            % (round_number, len(self.lines))
                        )
                    received += count
                latencies_ns.append(clock_ns() - sent_at)
                if received != size or receive_view[:size] != line:
                    raise EchoVerificationError(
                        "ping-pong round trip %d: sent %r, got back %r"
                        % (round_number, line, bytes(receive_view[:received]))
                    )
            seconds = time.perf_counter() - started
        finally:
            selector.close()
            self.close()
        latencies_ns.sort()
        rounds = len(self.lines)
        return ClientMeasurement(
            "ping-pong",
            1,
            rounds,
            rounds * size,
            seconds,
            p50_us=percentile(latencies_ns, 50) / 1000.0,
            p99_us=percentile(latencies_ns, 99) / 1000.0,
        )


def run_echo(
    server: str,
    mode: str,
    connections: int,
    lines: int,
    line_size: int = 16,
    timeout: float = DEFAULT_TIMEOUT,
    on_server_started: Optional[Callable[[EchoServerProcess], None]] = None,
    idle_connections: int = 0,
    process_class: type[EchoServerProcess] = EchoServerProcess,
) -> EchoResult:
    """Start echo server *server* in a subprocess, run one client *mode* against it.

    *mode* is ``"pipelined"`` (*connections* connections, *lines* lines each)
    or ``"ping-pong"`` (one connection, *lines* round trips).  Everything,
    server start-up included, must finish within *timeout* seconds or
    EchoTimeoutError is raised; a wrong echo raises EchoVerificationError.
    The server process is stopped and reaped, and every socket closed, before
    this returns or raises.  *on_server_started* is called with the
    ``EchoServerProcess`` as soon as its process exists (tests use it to
    check the process is gone afterwards).  *idle_connections* silent
    connections are opened first and held during the run (the descriptor
    limits of both processes are raised for them).  *process_class* is the
    kind of server process (``chatcore.benchmark.tls.TLSEchoServerProcess``
    for the same servers over TLS); its ``connector()`` opens the connections.
    """
    if idle_connections > SELECT_IDLE_LIMIT and server in SELECT_BOUND_SERVERS:
        raise ValueError("server %r uses select() and cannot hold %d idle connections" % (server, idle_connections))
    if mode not in MODES:
        raise ValueError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
    if mode == "ping-pong" and connections != 1:
        raise ValueError("ping-pong runs over exactly one connection, not %d" % connections)
    if connections < 1 or lines < 1:
        raise ValueError("connections and lines must be at least 1")
    deadline = time.monotonic() + timeout
    # Outliving the benchmark is impossible anyway (stdin lifeline); the cap is a backstop.
    process = process_class(server, max_seconds=max(DEFAULT_MAX_SECONDS, timeout + 60.0))
    client: Any = None
    idle: list[socket.socket] = []
    rss_per_idle = None
    if idle_connections:
        raise_descriptor_limit(idle_connections + connections + 256)
    try:
        if on_server_started is not None:
            on_server_started(process)
        process.start(startup_timeout=timeout)
        assert process.port is not None
        if idle_connections:
            server_pid = process.process.pid  # type: ignore[union-attr]
            before = resident_bytes(server_pid)
            idle = open_idle_connections(process.port, idle_connections, deadline)
            time.sleep(0.5)  # let the server accept the last of them
            after = resident_bytes(server_pid)
            if before is not None and after is not None:
                rss_per_idle = (after - before) / idle_connections
        remaining = deadline - time.monotonic()
        if mode == "pipelined":
            client = PipelinedClient(
                process.port, connections, lines, line_size, timeout=remaining, connector=process.connector()
            )
        else:
            client = PingPongClient(process.port, lines, line_size, timeout=remaining, connector=process.connector())
        measurement = client.run(timeout=max(0.0, deadline - time.monotonic()))
    except EchoTimeoutError as error:
        raise EchoTimeoutError(
            "%s echo run on server %r exceeded its %g s timeout: %s" % (mode, server, timeout, error)
        ) from None
    finally:
        if client is not None:
            client.close()
        for sock in idle:
            sock.close()
        process.stop()
    seconds = measurement.seconds
    return EchoResult(
        mode=mode,
        connections=measurement.connections,
        messages=measurement.messages,
        bytes=measurement.bytes,
        seconds=seconds,
        messages_per_s=per_second(measurement.messages, seconds),
        mb_per_s=per_second(measurement.bytes / 1e6, seconds),
        p50_us=measurement.p50_us,
        p99_us=measurement.p99_us,
        **process.report(),
        idle_connections=idle_connections,
        rss_per_idle_connection=rss_per_idle,
    )


# --- Command line ----------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.echo serve ...``: run one echo server."""
    return serve_main(argv, EchoServerProcess, "Echo-server side of chatcore's loopback echo benchmark.", serve)


if __name__ == "__main__":
    sys.exit(main())
