"""Request/response benchmark: a stdlib-era SMTP server, unchanged, on each asyncore.

The server is one module of legacy code, ``legacy_smtpd.py``, written against
``import asynchat, asyncore``.  Each row runs that file unchanged in its own
process, on:

* ``stdlib`` (Python <= 3.11) or ``pyasynchat`` (PyPI's verbatim copies, 3.12+):
  the real legacy modules;
* ``chatcore-compat``: ``chatcore.compat.install()`` before the import, as a
  legacy program would use chatcore (stdlib send timing: each push handed to
  the socket at once);
* ``chatcore``: the same code given chatcore's own API under those names
  (``chatcore.async_chat``, ``chatcore.dispatcher``, ``chatcore.loop``), whose
  pushes are coalesced to the end of a loop turn.

Like the echo servers, each measures its send timing before it listens and a
chatcore row whose timing contradicts its name refuses to start.

The client (in the benchmarking process) opens a few connections; each plays
``inprocess.smtp_session``: greeting, HELO, then per transaction MAIL FROM,
RCPT TO, DATA, a ~1 KiB body ending ``\\r\\n.\\r\\n`` and RSET, then QUIT, one
command at a time, waiting for each reply as a client without PIPELINING
does.  Every reply is compared byte for byte with the one the server must
send (a body's reply names its size and CRC-32), and after QUIT the server
must close the connection.  Reported: commands and transactions per second,
and p50/p99 of the per-command round trip.

``run_smtp_servers`` starts the rows' servers, plays a few client runs
against each in turn and keeps each row's fastest; ``run_smtp`` is one row.
The server side is a command, used by ``SMTPServerProcess``::

    python -m chatcore.benchmark.smtp serve --server chatcore --port-file PATH
"""

import dataclasses
import selectors
import sys
import time
from typing import Any, Callable, Optional, Union

from . import echo, framing
from .inprocess import Step, line_echo_handler_class, load_server_module, smtp_session
from .serverproc import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_TIMEOUT,
    BenchmarkError,
    BenchmarkTimeoutError,
    ServerProcess,
    VerificationError,
    connect,
    per_second,
    percentile,
    send_rest,
    serve_main,
    start_lifeline,
    write_port_file,
)

__all__ = [
    "FAULT_SERVERS",
    "SERVERS",
    "SMTPClient",
    "SMTPMeasurement",
    "SMTPResult",
    "SMTPServerProcess",
    "available_servers",
    "main",
    "run_smtp",
    "run_smtp_servers",
    "serve",
]

#: Every SMTP server row this module knows; ``available_servers()`` says which run here.
SERVERS = ("chatcore", "chatcore-compat", "stdlib", "pyasynchat")
#: Servers that misbehave on purpose (on chatcore's API), so the harness's own
#: tests can show that it notices: one reply with a changed byte, or no reply
#: to a message body.  Accepted by run_smtp and ``serve``, never listed as available.
FAULT_SERVERS = ("fault:wrong-reply", "fault:silent")
BODY_SIZE = 1024


def available_servers() -> list[str]:
    """The SMTP server rows this Python can run, chatcore's first."""
    servers = list(echo.CHATCORE_SEND_MODES)
    origin = framing.legacy_origin()  # found by file, not imported here
    if origin is not None:
        servers.append(echo.LEGACY_SERVERS[origin])
    return servers


# --- The server (runs in the ``serve`` subprocess) ------------------------------------


def _faulty_channel(channel_class: type[Any], fault: str) -> type[Any]:
    """The legacy server's channel with one deliberate defect."""

    class FaultyChannel(channel_class):  # type: ignore[misc]
        def message(self, data: bytes) -> None:
            if fault == "fault:silent":
                return
            channel_class.message(self, data)

        def reply(self, text: str) -> None:
            if self.messages == 2 and text.startswith("250 OK: message"):
                text = text[:-1] + ("0" if text[-1] != "0" else "1")  # one byte off
            channel_class.reply(self, text)

    return FaultyChannel


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run SMTP server row *server* until the process is ended; see the module docstring."""
    start_lifeline(max_seconds, watch_stdin, "SMTP server")
    row = "chatcore" if server in FAULT_SERVERS else server
    asynchat, asyncore, detail = echo.asyncore_modules(row)
    probe = line_echo_handler_class(asynchat.async_chat)  # the class default, as the legacy channel has
    timing, coalesce, detail = echo.checked_send_timing(row, probe, asynchat.async_chat, asyncore.loop, detail)
    module = load_server_module(asynchat, asyncore)
    if server in FAULT_SERVERS:
        module.SMTPServer.channel_class = _faulty_channel(module.SMTPChannel, server)
        detail += ", deliberately faulty channel (%s)" % server
    detail += "; legacy_smtpd.py unchanged"

    def announce(port: int) -> None:
        write_port_file(
            port_file,
            port,
            server,
            detail,
            serves_chatcore=row in echo.CHATCORE_SEND_MODES,
            send_timing=timing,
            ac_coalesce_sends=coalesce,
        )

    module.serve(0, on_listening=announce)


class SMTPServerProcess(ServerProcess):
    """An SMTP server row in a child process running this chatcore (see ServerProcess)."""

    module = "chatcore.benchmark.smtp"
    label = "SMTP server"
    servers = SERVERS
    fault_servers = FAULT_SERVERS
    available_servers = staticmethod(available_servers)


# --- The client --------------------------------------------------------------------------


@dataclasses.dataclass
class SMTPMeasurement:
    """What a client run measured: counts, bytes the client sent, seconds, latencies."""

    connections: int
    transactions: int
    commands: int
    bytes: int
    seconds: float
    p50_us: float
    p99_us: float


class _Session:
    __slots__ = ("label", "sock", "steps", "position", "pending", "sent_at", "done")

    def __init__(self, label: str, sock: Any, steps: list[Step]):
        self.label = label
        self.sock = sock
        self.steps = steps
        self.position = 0
        self.pending = b""
        self.sent_at = 0
        self.done = False


class SMTPClient:
    """*connections* SMTP sessions of *transactions* transactions each, one command at a time.

    Construction prepares every session's script and connects (not part of
    the measurement); ``run()`` plays the sessions, checks every reply and
    closes the sockets.
    """

    def __init__(
        self,
        port: int,
        connections: int,
        transactions: int,
        body_size: int = BODY_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if connections < 1 or transactions < 1:
            raise ValueError("connections and transactions must be at least 1")
        self.transactions = transactions
        self.sessions: list[_Session] = []
        deadline = time.monotonic() + timeout
        try:
            for index in range(connections):
                steps = smtp_session(index, transactions, body_size)
                self.sessions.append(_Session("connection %d" % index, connect(port, deadline), steps))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for session in self.sessions:
            session.sock.close()

    def _progress(self) -> str:
        return ", ".join(
            "%s: %d of %d replies" % (session.label, session.position, len(session.steps)) for session in self.sessions
        )

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> SMTPMeasurement:
        deadline = time.monotonic() + timeout
        clock_ns = time.perf_counter_ns
        latencies_ns: list[int] = []
        sent_bytes = 0
        selector = selectors.DefaultSelector()
        try:
            for session in self.sessions:
                selector.register(session.sock, selectors.EVENT_READ, session)
            unfinished = len(self.sessions)
            started = time.perf_counter()
            while unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchmarkTimeoutError(
                        "SMTP run did not finish within %.3g s (%s)" % (timeout, self._progress())
                    )
                for key, _ in selector.select(min(remaining, 1.0)):
                    session = key.data
                    try:
                        data = session.sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError as error:
                        raise BenchmarkError("%s: %s" % (session.label, error)) from error
                    if session.done:
                        if data:
                            raise VerificationError("%s: %r after the reply to QUIT" % (session.label, data))
                        selector.unregister(session.sock)
                        unfinished -= 1
                        continue
                    if not data:
                        raise BenchmarkError(
                            "%s: the server closed the connection (%s)" % (session.label, self._progress())
                        )
                    step = session.steps[session.position]
                    pending = session.pending + data
                    if len(pending) < len(step.reply):
                        session.pending = pending
                        continue
                    if pending != step.reply:
                        raise VerificationError(
                            "%s: %s %r got reply %r, expected %r"
                            % (session.label, step.command, step.request[:60], pending, step.reply)
                        )
                    if step.request:
                        latencies_ns.append(clock_ns() - session.sent_at)
                    session.pending = b""
                    session.position += 1
                    if session.position == len(session.steps):
                        session.done = True  # the server must now close
                        continue
                    request = session.steps[session.position].request
                    session.sent_at = clock_ns()
                    try:
                        sent = session.sock.send(request)
                    except BlockingIOError:
                        sent = 0
                    except OSError as error:
                        raise BenchmarkError("%s: %s" % (session.label, error)) from error
                    if sent < len(request):
                        send_rest(session.sock, request, sent, deadline)
                    sent_bytes += len(request)
            seconds = time.perf_counter() - started
        finally:
            selector.close()
            self.close()
        latencies_ns.sort()
        return SMTPMeasurement(
            connections=len(self.sessions),
            transactions=len(self.sessions) * self.transactions,
            commands=len(latencies_ns),
            bytes=sent_bytes,
            seconds=seconds,
            p50_us=percentile(latencies_ns, 50) / 1000.0,
            p99_us=percentile(latencies_ns, 99) / 1000.0,
        )


# --- One whole run -----------------------------------------------------------------------


@dataclasses.dataclass
class SMTPResult:
    """The outcome of one ``run_smtp``: the client's measurement and what served.

    ``commands`` counts commands sent and answered (the body of a message
    counts as one), ``bytes`` what the client sent; ``p50_us``/``p99_us`` are
    per-command round trips.  ``implementation``, ``server_detail``,
    ``send_timing`` and ``ac_coalesce_sends`` are as in ``echo.EchoResult``.
    """

    server: str
    connections: int
    transactions: int
    commands: int
    bytes: int
    seconds: float
    transactions_per_s: float
    commands_per_s: float
    p50_us: float
    p99_us: float
    #: Client runs made; the figures are the fastest run's.
    passes: int = 1
    implementation: Optional[str] = None
    server_detail: Optional[str] = None
    server_pid: Optional[int] = None
    server_returncode: Optional[int] = None
    send_timing: Optional[str] = None
    ac_coalesce_sends: Union[bool, str, None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_smtp_servers(
    servers: list[str],
    connections: int,
    transactions: int,
    passes: int = 1,
    body_size: int = BODY_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    on_server_started: Optional[Callable[[SMTPServerProcess], None]] = None,
) -> dict[str, SMTPResult]:
    """Each SMTP server row of *servers* in a subprocess, *passes* client runs each; the fastest of each.

    The servers are started first (an idle one waits in its poller and costs
    nothing), then played in turn, the order reversed every other pass, so
    that a disturbed phase of a shared machine hits every row.  Each run
    plays *connections* sessions of *transactions* transactions.
    Everything, start-up included, must finish within *timeout* seconds or
    BenchmarkTimeoutError is raised; a wrong reply raises VerificationError.
    Every server process is stopped and reaped, and every socket closed,
    before this returns or raises.  *on_server_started* is called with each
    ``SMTPServerProcess`` as soon as it exists.
    """
    if connections < 1 or transactions < 1 or passes < 1:
        raise ValueError("connections, transactions and passes must be at least 1")
    deadline = time.monotonic() + timeout
    processes = [SMTPServerProcess(server, max_seconds=max(DEFAULT_MAX_SECONDS, timeout + 60.0)) for server in servers]
    fastest: dict[str, SMTPMeasurement] = {}
    try:
        for process in processes:
            if on_server_started is not None:
                on_server_started(process)
            process.start(startup_timeout=max(0.0, deadline - time.monotonic()))
        for round_index in range(passes):
            for process in processes if round_index % 2 == 0 else processes[::-1]:
                assert process.port is not None
                client = SMTPClient(
                    process.port, connections, transactions, body_size, timeout=max(0.0, deadline - time.monotonic())
                )
                try:
                    measurement = client.run(timeout=max(0.0, deadline - time.monotonic()))
                finally:
                    client.close()
                best = fastest.get(process.server)
                if best is None or measurement.seconds < best.seconds:
                    fastest[process.server] = measurement
    except BenchmarkTimeoutError as error:
        raise BenchmarkTimeoutError(
            "SMTP run on %s exceeded its %g s timeout: %s" % (", ".join(map(repr, servers)), timeout, error)
        ) from None
    finally:
        for process in processes:
            process.stop()
    return {process.server: _result(process, fastest[process.server], passes) for process in processes}


def run_smtp(server: str, connections: int, transactions: int, **options: Any) -> SMTPResult:
    """One SMTP server row, as ``run_smtp_servers([server], ...)`` (same options)."""
    return run_smtp_servers([server], connections, transactions, **options)[server]


def _result(process: SMTPServerProcess, measurement: SMTPMeasurement, passes: int) -> SMTPResult:
    seconds = measurement.seconds
    return SMTPResult(
        connections=measurement.connections,
        transactions=measurement.transactions,
        commands=measurement.commands,
        bytes=measurement.bytes,
        seconds=seconds,
        transactions_per_s=per_second(measurement.transactions, seconds),
        commands_per_s=per_second(measurement.commands, seconds),
        p50_us=measurement.p50_us,
        p99_us=measurement.p99_us,
        passes=passes,
        **process.report(),
    )


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.smtp serve ...``: run one SMTP server row."""
    return serve_main(argv, SMTPServerProcess, "Server side of chatcore's SMTP request/response benchmark.", serve)


if __name__ == "__main__":
    sys.exit(main())
