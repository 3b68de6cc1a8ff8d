"""A line-echo server and a self-checking load run, both on chatcore.

``python -m chatcore demo`` runs ``run_demo``: an echo server and several
``async_chat`` clients share one event loop over 127.0.0.1; every client sends
numbered lines and checks that each echoed line comes back exact and in
order.  The server pieces are public because ``examples/echo_server.py``
serves with them:

* ``Listener`` accepts connections, several per readiness event, and hands
  each socket to a handler factory;
* ``EchoHandler`` sends every ``\\n``-terminated line straight back;
* ``start_echo_server`` puts the two together on a given channel map.

Both example servers take the same per-connection limits on their command
line, ``--idle-timeout`` and ``--max-output`` (``add_serving_options``), and
apply them the same way: a subclass of their handler class with the matching
``async_chat`` attributes in its body (``serving_limits``, ``handler_with``).
They serve the same way too (``serve``): on ``chatcore.loop()``, or with
``--event-loop asyncio`` or ``uvloop`` through ``chatcore.aio.loop()``.
"""

import argparse
import math
import socket
import sys
import time
from typing import Any, Callable, Optional, Union

import chatcore

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_OUTPUT",
    "DemoError",
    "DemoResult",
    "EchoClient",
    "EchoHandler",
    "Listener",
    "add_serving_options",
    "demo_line",
    "handler_with",
    "run_demo",
    "seconds_argument",
    "serve",
    "serving_limits",
    "start_echo_server",
]

ChannelMap = dict[int, Any]
HandlerFactory = Callable[..., Any]


class Listener(chatcore.dispatcher):
    """A listening TCP socket that turns each accepted connection into a channel.

    ``handler_factory(sock, map=channel_map)`` is called for every connection,
    so a handler class works as the factory, and ``functools.partial`` adds
    arguments of its own.
    """

    #: Connections taken per readiness event, at most.  One accept() per event
    #: lets connections arriving faster than the loop turns fill the backlog,
    #: and the kernel then drops new ones (their clients retry a second or more
    #: later); a bound keeps a busy listener from starving the channels it serves.
    accept_batch = 64

    def __init__(
        self,
        handler_factory: HandlerFactory,
        host: str = "127.0.0.1",
        port: int = 0,
        map: Optional[ChannelMap] = None,
        backlog: int = 128,
    ):
        chatcore.dispatcher.__init__(self, map=map)
        self.handler_factory = handler_factory
        # None means the default socket_map, for the handlers as for the listener.
        self.channel_map = map
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.create_socket(family, socket.SOCK_STREAM)
        # On Windows SO_REUSEADDR would let another process steal the port.
        if sys.platform != "win32":
            self.set_reuse_addr()
        self.bind((host, port))
        self.listen(backlog)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the port the kernel chose when 0 was asked for."""
        host, port = self.socket.getsockname()[:2]
        return host, port

    def handle_accept(self) -> None:
        for _ in range(self.accept_batch):
            # None: nobody is left waiting, or the process is out of descriptors
            # or memory (accept() then pauses the listener for a while); either
            # way, trying again before the next event would only spin.
            pair = self.accept()
            if pair is None:
                return
            self.handle_accepted(*pair)
            if not self.accepting:
                return  # handle_accepted closed the listener

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        self.handler_factory(sock, map=self.channel_map)


class EchoHandler(chatcore.async_chat):
    """Sends each received line back, terminator included, as soon as it is complete."""

    terminator_bytes = b"\n"
    #: A peer that never ends its line would otherwise make us buffer without limit.
    max_line_length = 1024 * 1024

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[ChannelMap] = None):
        chatcore.async_chat.__init__(self, sock, map)
        self._line_parts: list[bytes] = []
        self._line_length = 0
        self.set_terminator(self.terminator_bytes)

    def collect_incoming_data(self, data: bytes) -> None:
        if not self.connected:
            return  # closed for an overlong line; the rest of this read is dropped
        self._line_length += len(data)
        if self._line_length > self.max_line_length:
            self.close()
            return
        self._line_parts.append(data)

    def found_terminator(self) -> None:
        if not self.connected:
            return
        line = b"".join(self._line_parts)
        self._line_parts.clear()
        self._line_length = 0
        self.handle_line(line)

    def handle_line(self, line: bytes) -> None:
        """Answer one received *line* (terminator excluded): send it back.

        Subclasses that answer some lines otherwise (a command, such as
        ``examples/echo_server.py``'s ``STARTTLS``) override this.
        """
        self.push(line + self.terminator_bytes)


def start_echo_server(
    channel_map: Optional[ChannelMap],
    host: str = "127.0.0.1",
    port: int = 0,
    handler_class: HandlerFactory = EchoHandler,
) -> Listener:
    """An echo server listening on (host, port), its channels living in *channel_map*."""
    return Listener(handler_class, host, port, map=channel_map)


#: Seconds a connection may go without a byte received or sent before the
#: example servers close it (``--idle-timeout``).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Bytes queued to send to one connection above which the example servers stop
#: reading from it until it has taken half (``--max-output``): a client that
#: sends but never reads cannot grow the server's memory without bound.
DEFAULT_MAX_OUTPUT = 1024 * 1024


def _non_negative(kind: Callable[[str], Union[int, float]], text: str) -> Union[int, float]:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not (value >= 0 and math.isfinite(value)):  # NaN fails both
        raise argparse.ArgumentTypeError("must be a finite number, 0 or more, got %s" % text)
    return value


def seconds_argument(text: str) -> float:
    """An argparse ``type``: a number of seconds, 0 or more (0 is how a timeout is turned off)."""
    return float(_non_negative(float, text))


def _bytes_argument(text: str) -> int:
    return int(_non_negative(int, text))


def add_serving_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--idle-timeout SECONDS`` and ``--max-output BYTES`` to *parser*; 0 turns either off."""
    parser.add_argument(
        "--idle-timeout",
        type=seconds_argument,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection after this long without a byte received or sent; 0: never (default %(default)s)",
    )
    parser.add_argument(
        "--max-output",
        type=_bytes_argument,
        default=DEFAULT_MAX_OUTPUT,
        metavar="BYTES",
        help="stop reading from a connection while more than this is queued to send to it; 0: no limit "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=EVENT_LOOPS[0],
        help="serve on chatcore.loop(), or through chatcore.aio.loop() on asyncio's loop or uvloop's "
        "(default %(default)s)",
    )


#: What ``--event-loop`` chooses from: chatcore.loop() first, the default.
EVENT_LOOPS = ("chatcore", "asyncio", "uvloop")


def serve(channel_map: ChannelMap, event_loop: str = "chatcore", max_seconds: Optional[float] = None) -> None:
    """Serve *channel_map* until it is empty or *max_seconds* have passed, on the *event_loop* named.

    *event_loop* is one of ``EVENT_LOOPS``: ``"chatcore"`` turns
    ``chatcore.loop()``; ``"asyncio"`` and ``"uvloop"`` await
    ``chatcore.aio.loop()`` on a new event loop of that kind (SystemExit with
    a message when uvloop is not installed).
    """
    if event_loop == "chatcore":
        if max_seconds is None:
            chatcore.loop(timeout=1.0, map=channel_map)
            return
        deadline = time.monotonic() + max_seconds
        while channel_map and time.monotonic() < deadline:
            chatcore.loop(timeout=min(1.0, max_seconds), map=channel_map, count=1)
        return
    if event_loop not in EVENT_LOOPS:
        raise ValueError("event_loop must be one of %s, not %r" % (", ".join(EVENT_LOOPS), event_loop))
    # Imported only when asked for: ``import chatcore`` stays free of asyncio.
    import asyncio

    from chatcore import aio

    async def serve_for_a_while() -> None:
        serving = aio.loop(channel_map, timeout=1.0)
        if max_seconds is None:
            await serving
            return
        try:
            await asyncio.wait_for(serving, max_seconds)
        except asyncio.TimeoutError:
            pass

    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise SystemExit("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        new_loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        new_loop = asyncio.new_event_loop()
    try:
        new_loop.run_until_complete(serve_for_a_while())
    finally:
        new_loop.close()


def serving_limits(options: argparse.Namespace) -> dict[str, Any]:
    """The ``async_chat`` class attributes for the ``add_serving_options`` values in *options*."""
    return {
        "ac_idle_timeout": options.idle_timeout or None,
        "ac_max_output_buffer": options.max_output or None,
    }


def handler_with(base: type, **class_attributes: Any) -> type:
    """A subclass of the handler class *base*, under the same name, with *class_attributes* in its body.

    How the example servers apply their command-line settings: a class body
    is where ``async_chat`` reads (and checks) its limits, and every
    connection the listener accepts then has the same ones.
    """
    return type(base.__name__, (base,), class_attributes)


def demo_line(connection: int, index: int) -> bytes:
    """Line *index* of client *connection*, without terminator; lengths vary on purpose."""
    filler = b"abcdefghijklmnopqrstuvwxyz0123456789" * 2
    return b"%d:%d:" % (connection, index) + filler[: (index * 7) % len(filler)]


class DemoError(Exception):
    """The demo run failed: a wrong or missing echo, a dropped connection or the deadline."""


class DemoResult:
    """What a successful run did."""

    def __init__(self, lines: int, connections: int, seconds: float, engine: str):
        self.lines = lines
        self.connections = connections
        self.seconds = seconds
        self.engine = engine

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return "chatcore demo: %d connections x %d lines = %d lines echoed in %.3f s (%.0f lines/s), engine: %s" % (
            self.connections,
            self.lines // self.connections,
            self.lines,
            self.seconds,
            self.lines_per_second,
            self.engine,
        )


class _DemoRun:
    """Bookkeeping shared by the clients of one run."""

    def __init__(self, connections: int):
        self.connections = connections
        self.finished: int = 0
        self.failure: Optional[str] = None
        self.listener: Optional[Listener] = None

    def fail(self, message: str) -> None:
        """Record the first failure and leave the event loop at once."""
        if self.failure is None:
            self.failure = message
        raise chatcore.ExitNow(message)

    def client_finished(self) -> None:
        self.finished += 1
        if self.finished == self.connections and self.listener is not None:
            # With the listener gone the map empties as the server channels
            # see their clients close, and loop() returns by itself.
            self.listener.close()


class EchoClient(chatcore.async_chat):
    """Sends ``lines`` numbered lines and checks every echo, keeping a bounded window in flight."""

    #: Lines sent but not yet echoed, at most; bounds memory for any --lines.
    window = 512

    def __init__(
        self,
        connection: int,
        lines: int,
        address: tuple[str, int],
        run: _DemoRun,
        map: Optional[ChannelMap] = None,
    ):
        chatcore.async_chat.__init__(self, map=map)
        self.connection = connection
        self.lines = lines
        self.sent: int = 0
        self.received: int = 0
        self._run = run
        self._line_parts: list[bytes] = []
        self.set_terminator(b"\n")
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.connect(address)
        # Queued before the connection completes: async_chat sends it once writable.
        self._send_more()

    def _send_more(self) -> None:
        # One push per batch: a push per line would cost a send() call per line.
        end = min(self.lines, self.received + self.window)
        if end > self.sent:
            self.push(b"".join(demo_line(self.connection, i) + b"\n" for i in range(self.sent, end)))
            self.sent = end

    def handle_connect(self) -> None:
        pass

    def collect_incoming_data(self, data: bytes) -> None:
        self._line_parts.append(data)

    def found_terminator(self) -> None:
        line = b"".join(self._line_parts)
        self._line_parts.clear()
        if self.received >= self.sent:
            self._run.fail(
                "connection %d: unexpected extra line %r after %d lines" % (self.connection, line, self.received)
            )
        expected = demo_line(self.connection, self.received)
        if line != expected:
            self._run.fail(
                "connection %d, line %d: expected %r, got %r" % (self.connection, self.received, expected, line)
            )
        self.received += 1
        if self.received == self.lines:
            self.close()
            self._run.client_finished()
        elif self.sent - self.received <= self.window // 2:
            self._send_more()

    def handle_close(self) -> None:
        self._run.fail(
            "connection %d: closed by the server after %d of %d lines" % (self.connection, self.received, self.lines)
        )

    def handle_error(self) -> None:
        error = sys.exc_info()[1]
        self._run.fail("connection %d: %s: %s" % (self.connection, type(error).__name__, error))


def run_demo(
    lines: int,
    connections: int,
    timeout: float = 60.0,
    handler_class: HandlerFactory = EchoHandler,
) -> DemoResult:
    """Echo *lines* lines on each of *connections* loopback connections and check them.

    Raises DemoError on any wrong, missing or extra echo, on a dropped
    connection, or when the run takes longer than *timeout* seconds.
    """
    if lines < 1 or connections < 1:
        raise ValueError("lines and connections must be at least 1")
    channel_map: ChannelMap = {}
    run = _DemoRun(connections)
    clients: list[EchoClient] = []
    try:
        run.listener = start_echo_server(channel_map, "127.0.0.1", 0, handler_class)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        for connection in range(connections):
            clients.append(EchoClient(connection, lines, run.listener.address, run, channel_map))
        try:
            while channel_map:
                if time.monotonic() >= deadline:
                    raise DemoError(
                        "timed out after %g s: %d of %d lines echoed"
                        % (timeout, sum(c.received for c in clients), lines * connections)
                    )
                # A bounded number of short turns, so the deadline is checked often.
                chatcore.loop(timeout=0.05, map=channel_map, count=20)
        except chatcore.ExitNow:
            raise DemoError(run.failure or "stopped") from None
        seconds = time.perf_counter() - started
    finally:
        chatcore.close_all(channel_map)
    if run.finished != connections:
        raise DemoError("only %d of %d connections finished" % (run.finished, connections))
    return DemoResult(lines * connections, connections, seconds, chatcore.implementation)
