"""Request/response and echo workloads in one process, one loop turn at a time.

The loopback benchmarks (``smtp``, ``echo``) measure servers in their own
processes, which is what users see but is neither repeatable nor countable
with callgrind.  The workloads here run the same server code on a socket
pair instead: the server channel sits in a private map, the test writes the
client end directly, calls the row's ``poll(0.0, map)`` until the answer is
there (one turn, normally) and reads it back, so every run makes the same
calls and the regression gate can count instructions:

* ``smtp``: one session of the legacy SMTP server (``legacy_smtpd.py``, run
  unchanged): greeting, HELO, then per transaction MAIL FROM, RCPT TO, DATA,
  a ~1 KiB body ending ``\\r\\n.\\r\\n`` and RSET, then QUIT; one command at a
  time, every reply compared byte for byte;
* ``echo-pipelined``: the push-per-line echo handler, fed batches of many
  lines per read, every echoed batch compared with what was sent;

each on ``compat`` (chatcore.compat's modules: stdlib send timing) or on
``chatcore`` (chatcore's own API under the legacy names: coalesced sends).

This module imports chatcore only by its public names and loads
``legacy_smtpd.py`` from beside itself by path, so the regression gate can
load this tree's copy and run it on another revision's build (like
``framing.py``).  It also holds what the loopback benchmarks share with it:
the SMTP script and its replies, the echo handler, the loader that runs the
legacy server module on given modules.
"""

import importlib.util
import os
import socket
import sys
import time
import types
import zlib
from typing import Any, Callable, NamedTuple, Optional

import chatcore

__all__ = [
    "APIS",
    "TERMINATOR",
    "WORKLOADS",
    "InProcessError",
    "Step",
    "api_modules",
    "chatcore_under_legacy_names",
    "line_echo_handler_class",
    "load_server_module",
    "message_body",
    "on_engine",
    "run_once",
    "smtp_session",
    "smtp_transcript",
]

#: The echo benchmarks' line terminator.
TERMINATOR = b"\n"
SERVER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_smtpd.py")
#: The greeting's and HELO's host name, as the benchmark's servers are built.
HOSTNAME = "localhost"
#: A reply that has not arrived after this many loop turns is a failure.
MAX_TURNS = 16


class InProcessError(AssertionError):
    """A workload's server answered something else than it must."""


# --- What the benchmarks share -----------------------------------------------------


def chatcore_under_legacy_names() -> tuple[types.ModuleType, types.ModuleType]:
    """Modules ``asynchat`` and ``asyncore`` whose names are chatcore's own API.

    What legacy code written against ``import asynchat, asyncore`` runs on
    when it is given ``chatcore.async_chat`` (coalescing sends),
    ``chatcore.dispatcher`` and ``chatcore.loop``/``poll`` instead of the
    drop-in compat modules.
    """
    modules = []
    for name in ("asynchat", "asyncore"):
        module = types.ModuleType(name, "chatcore's own API under the legacy name %r" % name)
        for public in chatcore.__all__:
            setattr(module, public, getattr(chatcore, public))
        modules.append(module)
    return modules[0], modules[1]


def load_server_module(asynchat: Any, asyncore: Any, path: str = SERVER_FILE) -> types.ModuleType:
    """A fresh copy of the legacy server module *path*, run on *asynchat* and *asyncore*.

    Its ``import asynchat, asyncore`` gives the modules passed here: they
    stand under those names in ``sys.modules`` while the module executes, and
    whatever stood there before is put back afterwards.
    """
    names = {"asynchat": asynchat, "asyncore": asyncore}
    held = {name: sys.modules.get(name) for name in names}
    spec = importlib.util.spec_from_file_location("chatcore_bench_legacy_smtpd", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.update(names)
    try:
        spec.loader.exec_module(module)
    finally:
        for name, previous in held.items():
            if previous is None:
                del sys.modules[name]
            else:
                sys.modules[name] = previous
    return module


def line_echo_handler_class(chat_base: type[Any], coalesce_sends: Optional[bool] = None) -> type[Any]:
    """The push-per-line echo handler, built on *chat_base* (an async_chat class).

    The body is written once so chatcore and stdlib run exactly the same code.
    *coalesce_sends*, when given, is set as the class's ``ac_coalesce_sends``
    (chatcore's send-timing switch), so each row names its mode explicitly
    instead of inheriting a default that may change.
    """

    class LineEchoHandler(chat_base):  # type: ignore[misc]
        if coalesce_sends is not None:
            ac_coalesce_sends = coalesce_sends

        def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None):
            chat_base.__init__(self, sock, map)
            self.line_parts: list[bytes] = []
            self.set_terminator(TERMINATOR)

        def collect_incoming_data(self, data: bytes) -> None:
            self.line_parts.append(data)

        def found_terminator(self) -> None:
            line = b"".join(self.line_parts)
            self.line_parts = []
            self.push(line + TERMINATOR)

    return LineEchoHandler


class Step(NamedTuple):
    """One exchange of an SMTP session: what the client sends, the reply it must get."""

    request: bytes  # b"" for the greeting, which comes unasked
    reply: bytes
    command: str  # for messages: "greeting", "HELO", "MAIL", ..., "body"


_BODY_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod %04x.%06x"


def message_body(connection: int, transaction: int, size: int = 1024) -> bytes:
    """The message of one transaction, about *size* bytes, lines ending ``\\r\\n``.

    Distinct per connection and transaction (a reply for another message has
    another CRC), and with a line that begins with a dot, so the server's
    undoing of dot-stuffing is exercised.
    """
    lines = [b"Subject: benchmark message %d of connection %d" % (transaction, connection), b""]
    while sum(len(line) + 2 for line in lines) < size:
        lines.append(_BODY_LINE % (connection, len(lines) * 65536 + transaction))
    lines[len(lines) // 2] = b"." + lines[len(lines) // 2]
    return b"\r\n".join(lines)


def _stuffed(body: bytes) -> bytes:
    return b"\r\n".join(b"." + line if line[:1] == b"." else line for line in body.split(b"\r\n"))


def smtp_session(connection: int, transactions: int, body_size: int = 1024) -> list[Step]:
    """Every exchange of one SMTP session, with the exact reply each must get.

    The greeting, HELO, then per transaction MAIL FROM, RCPT TO, DATA, the
    body (dot-stuffed, ending ``\\r\\n.\\r\\n``) and RSET, then QUIT.
    """
    host = HOSTNAME.encode()
    steps = [
        Step(b"", b"220 " + host + b" SMTP ready\r\n", "greeting"),
        Step(b"HELO client%d.example\r\n" % connection, b"250 " + host + b"\r\n", "HELO"),
    ]
    ok = b"250 OK\r\n"
    for transaction in range(transactions):
        body = message_body(connection, transaction, body_size)
        steps += [
            Step(b"MAIL FROM:<sender%d@example.org>\r\n" % connection, ok, "MAIL"),
            Step(b"RCPT TO:<rcpt%d@example.net>\r\n" % transaction, ok, "RCPT"),
            Step(b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n", "DATA"),
            Step(
                _stuffed(body) + b"\r\n.\r\n",
                b"250 OK: message %d, %d bytes, crc32 %08x\r\n"
                % (transaction + 1, len(body), zlib.crc32(body) & 0xFFFFFFFF),
                "body",
            ),
            Step(b"RSET\r\n", ok, "RSET"),
        ]
    steps.append(Step(b"QUIT\r\n", b"221 Bye\r\n", "QUIT"))
    return steps


# --- The in-process workloads ------------------------------------------------------

#: The two ways chatcore serves a legacy program, by the name the gate uses.
APIS = ("compat", "chatcore")


def api_modules(api: str) -> tuple[Any, Any]:
    """``(asynchat, asyncore)`` of *api*: chatcore.compat's modules, or chatcore's own API."""
    if api == "compat":
        from chatcore.compat import asynchat, asyncore

        return asynchat, asyncore
    if api == "chatcore":
        return chatcore_under_legacy_names()
    raise ValueError("api must be one of %s, not %r" % (", ".join(APIS), api))


def on_engine(modules: tuple[Any, Any], engine: types.ModuleType) -> tuple[Any, Any]:
    """*modules* (``(asynchat, asyncore)``) with their ``async_chat`` running on framing *engine*.

    The asynchat module is a copy whose ``async_chat`` is a subclass naming
    *engine* (chatcore's per-class engine switch), so the legacy server's
    channels, built on ``asynchat.async_chat``, use it; the originals are
    left alone.  For running one workload on each engine in one process.
    """
    asynchat, asyncore = modules
    bound: Any = types.ModuleType(asynchat.__name__, asynchat.__doc__)
    bound.__dict__.update({name: value for name, value in vars(asynchat).items() if not name.startswith("__")})
    bound.async_chat = type("async_chat", (asynchat.async_chat,), {"_engine": engine})
    return bound, asyncore


class _Client:
    """The client end of a socket pair, written and read directly between loop turns."""

    def __init__(self, sock: socket.socket, poll: Callable[..., None], channel_map: dict[int, Any]):
        sock.setblocking(False)
        self.sock = sock
        self.poll = poll
        self.channel_map = channel_map
        self.buffer = bytearray(1 << 16)
        self.view = memoryview(self.buffer)

    def exchange(self, request: bytes, expected: bytes) -> None:
        """Send *request*, turn the loop until *expected* has come back whole, compare."""
        if request and self.sock.send(request) != len(request):
            raise InProcessError("the socket pair took only part of a %d-byte request" % len(request))
        size = len(expected)
        received = 0
        turns = 0
        while received < size:
            if turns == MAX_TURNS:
                raise InProcessError(
                    "no whole reply to %r after %d loop turns: got %r, expected %r"
                    % (request[:40], turns, bytes(self.view[:received]), expected)
                )
            self.poll(0.0, self.channel_map)
            turns += 1
            try:
                count = self.sock.recv_into(self.view[received:])
            except BlockingIOError:
                continue
            if count == 0:
                raise InProcessError("the server closed the connection; expected %r" % expected)
            received += count
        if received != size or self.view[:size] != expected:
            raise InProcessError("sent %r, expected %r, got %r" % (request[:40], expected, bytes(self.view[:received])))

    def reply_line(self, request: bytes) -> bytes:
        """Send *request*, turn the loop until a whole reply line has come back; that line."""
        if request and self.sock.send(request) != len(request):
            raise InProcessError("the socket pair took only part of a %d-byte request" % len(request))
        received = b""
        for _ in range(MAX_TURNS):
            self.poll(0.0, self.channel_map)
            try:
                received += self.sock.recv(4096)
            except BlockingIOError:
                continue
            if received.endswith(b"\r\n"):
                return received
        raise InProcessError(
            "no whole reply line to %r after %d loop turns: got %r" % (request[:40], MAX_TURNS, received)
        )

    def expect_closed(self) -> None:
        """Turn the loop until the server has closed its end (and left the map)."""
        for _ in range(MAX_TURNS):
            self.poll(0.0, self.channel_map)
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                continue
            if data:
                raise InProcessError("data after the last reply: %r" % data)
            return
        raise InProcessError("the server did not close the connection after QUIT")


def smtp_transcript(asynchat: Any, asyncore: Any, requests: list[bytes]) -> list[bytes]:
    """The legacy SMTP server's reply to each of *requests*, on *asynchat*/*asyncore*.

    The greeting comes first; every request must be answered by one line.
    For comparing the server's behaviour across implementations (tests).
    """
    module = load_server_module(asynchat, asyncore)
    channel_map: dict[int, Any] = {}
    server = module.SMTPServer(("127.0.0.1", 0), HOSTNAME, map=channel_map)
    client_sock, server_sock = socket.socketpair()
    client = _Client(client_sock, asyncore.poll, channel_map)
    try:
        server.handle_accepted(server_sock, ("127.0.0.1", 0))
        return [client.reply_line(request) for request in [b""] + list(requests)]
    finally:
        client_sock.close()
        asyncore.close_all(map=channel_map)


def _run_smtp(asynchat: Any, asyncore: Any, transactions: int) -> float:
    module = load_server_module(asynchat, asyncore)
    steps = smtp_session(0, transactions)
    channel_map: dict[int, Any] = {}
    server = module.SMTPServer(("127.0.0.1", 0), HOSTNAME, map=channel_map)
    client_sock, server_sock = socket.socketpair()
    client = _Client(client_sock, asyncore.poll, channel_map)
    try:
        start = time.perf_counter()
        server.handle_accepted(server_sock, ("127.0.0.1", 0))
        exchange = client.exchange
        for step in steps:
            exchange(step.request, step.reply)
        client.expect_closed()
        seconds = time.perf_counter() - start
        if list(channel_map.values()) != [server] or server.messages != transactions:
            raise InProcessError(
                "after QUIT the map holds %r and %d messages were processed"
                % (list(channel_map.values()), server.messages)
            )
    finally:
        client_sock.close()
        asyncore.close_all(map=channel_map)
    return seconds


#: Lines of 16 bytes per batch: one read of the server takes them all.
ECHO_BATCH_LINES = 256


def _run_echo_pipelined(asynchat: Any, asyncore: Any, batches: int) -> float:
    handler_class = line_echo_handler_class(asynchat.async_chat)
    lines = b"".join(b"%015x" % index + TERMINATOR for index in range(batches * ECHO_BATCH_LINES))
    size = ECHO_BATCH_LINES * 16
    channel_map: dict[int, Any] = {}
    client_sock, server_sock = socket.socketpair()
    client = _Client(client_sock, asyncore.poll, channel_map)
    try:
        handler_class(server_sock, map=channel_map)
        exchange = client.exchange
        start = time.perf_counter()
        for offset in range(0, len(lines), size):
            batch = lines[offset : offset + size]
            exchange(batch, batch)
        seconds = time.perf_counter() - start
    finally:
        client_sock.close()
        asyncore.close_all(map=channel_map)
    return seconds


class Workload(NamedTuple):
    run: Callable[[Any, Any, int], float]
    #: Transactions or batches at scale 1.
    base_count: int
    description: str


WORKLOADS: dict[str, Workload] = {
    "smtp": Workload(_run_smtp, 1000, "one SMTP session, a ~1 KiB message per transaction"),
    "echo-pipelined": Workload(_run_echo_pipelined, 250, "batches of 256 lines of 16 B, a push per line"),
}


def count_at(workload: str, scale: float) -> int:
    """How many transactions (smtp) or batches (echo-pipelined) *workload* runs at *scale*."""
    return max(1, int(WORKLOADS[workload].base_count * scale))


def run_once(workload: str, api: str, scale: float = 1.0, modules: Optional[tuple[Any, Any]] = None) -> float:
    """Run *workload* once on *api* (or on the given ``(asynchat, asyncore)``); its seconds.

    Raises InProcessError when a reply differs from the one the server must send.
    """
    asynchat, asyncore = modules if modules is not None else api_modules(api)
    return WORKLOADS[workload].run(asynchat, asyncore, count_at(workload, scale))
