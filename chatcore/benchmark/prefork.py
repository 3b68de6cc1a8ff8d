"""Loopback echo served by ``chatcore.prefork()``: 1 worker against 2, and against no fork at all.

The echo benchmark's push-per-line handler (``chatcore.benchmark.echo``) on
``chatcore.async_chat``, with its pushes coalesced to the end of a loop turn,
served three ways, each in its own process:

* ``chatcore``: ``chatcore.loop()`` in the server process itself (the echo
  suite's row), what prefork's figures are next to;
* ``prefork-1``: ``chatcore.prefork(1)``: one forked worker, the parent
  supervising (the reference of this suite's ratios);
* ``prefork-2``: ``chatcore.prefork(2)``: two workers on the port
  (SO_REUSEPORT), the kernel spreading the connections.

Two client runs per server, in the benchmarking process:

* pipelined: ``PIPELINED_CONNECTIONS`` connections each echoing their lines
  with a window in flight (``echo.PipelinedClient``): aggregate throughput;
* concurrent ping-pong: ``PING_PONG_CONNECTIONS`` connections, each with one
  line in flight, sequential round trips (``ConcurrentPingPongClient``): the
  p50 and p99 latency of a round trip over all connections.

The load client runs on the same machine: on a 2-core box it takes about
one core, so two workers have less than two to share, and their aggregate
throughput says little about what a second core gives.  So each run also
reports the server's CPU time per echoed line: the user and system time of
the server's processes (the workers and the parent), read from /proc before
and after the client's run, over the lines echoed.  With two workers the
notes also say how many connections each worker held.

The server side is a command, as for the echo benchmark::

    python -m chatcore.benchmark.prefork serve --server prefork-2 --port-file PATH

The workers watch the lifeline (stdin's end of file, the maximum lifetime),
since ``prefork()`` forks only while no other thread runs.
"""

import dataclasses
import os
import selectors
import socket
import sys
import time
from typing import Any, Callable, Optional

import chatcore

from .echo import (
    WOULD_BLOCK,
    ClientMeasurement,
    EchoResult,
    EchoServerProcess,
    PipelinedClient,
    _listener_class,
    expected_stream,
)
from .inprocess import line_echo_handler_class
from .serverproc import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_TIMEOUT,
    BenchmarkError,
    BenchmarkTimeoutError,
    VerificationError,
    connect,
    per_second,
    percentile,
    raise_descriptor_limit,
    send_rest,
    serve_main,
    start_lifeline,
    write_port_file,
)

__all__ = [
    "BASELINE",
    "MODES",
    "PASSES",
    "SERVERS",
    "SETTINGS",
    "ConcurrentPingPongClient",
    "PreforkEchoServerProcess",
    "PreforkResult",
    "available_servers",
    "main",
    "process_cpu_seconds",
    "run_prefork_echo",
    "run_suite",
    "serve",
    "worker_connections",
]

#: The servers of this suite, and the one its ratios are to.
SERVERS = ("chatcore", "prefork-1", "prefork-2")
BASELINE = "prefork-1"
MODES = ("pipelined", "ping-pong")
PIPELINED_CONNECTIONS = 8
PING_PONG_CONNECTIONS = 8
#: Per ``python -m chatcore bench`` size: (mode, connections, lines or round trips per connection).
SETTINGS: dict[str, list[tuple[str, int, int]]] = {
    "quick": [("pipelined", PIPELINED_CONNECTIONS, 10_000), ("ping-pong", PING_PONG_CONNECTIONS, 500)],
    "default": [("pipelined", PIPELINED_CONNECTIONS, 50_000), ("ping-pong", PING_PONG_CONNECTIONS, 2_000)],
    "full": [("pipelined", PIPELINED_CONNECTIONS, 250_000), ("ping-pong", PING_PONG_CONNECTIONS, 10_000)],
}
#: Runs per figure (the fastest is kept), per size.
PASSES = {"quick": 1, "default": 3, "full": 5}

_WORKERS = {"prefork-1": 1, "prefork-2": 2}


def available_servers() -> list[str]:
    """The servers this platform can run: prefork needs ``os.fork()`` and, for the CPU figures, /proc."""
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"):
        return []
    return list(SERVERS)


# --- The server (the ``serve`` subprocess) -------------------------------------------


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run echo server *server* until the process is ended; see the module docstring."""
    raise_descriptor_limit(1 << 16)
    handler_class = line_echo_handler_class(chatcore.async_chat, True)
    channel_map: dict[int, Any] = {}
    listener = _listener_class(chatcore.dispatcher)(handler_class, channel_map)
    workers = _WORKERS.get(server)
    detail = "chatcore %s (%s engine), %s, Python %s" % (
        chatcore.__version__,
        chatcore.implementation,
        "chatcore.loop() in the server process" if workers is None else "chatcore.prefork(%d)" % workers,
        sys.version.split()[0],
    )
    write_port_file(port_file, listener.socket.getsockname()[1], server, detail, serves_chatcore=True, workers=workers)

    def serve_forever() -> None:
        start_lifeline(max_seconds, watch_stdin, "prefork echo worker")
        chatcore.loop(timeout=1.0, map=channel_map)

    if workers is None:
        start_lifeline(max_seconds, watch_stdin, "echo server")
        chatcore.loop(timeout=1.0, map=channel_map)
    else:
        # The parent's own bound: its workers end on the lifeline (exit
        # status 0, so they are not started again) and prefork() returns.
        prefork_returned = chatcore.prefork(workers, map=channel_map, serve=serve_forever)
        sys.exit(0 if all(status == 0 for status in prefork_returned) else 1)


class PreforkEchoServerProcess(EchoServerProcess):
    """This suite's echo server in a child process (see ``EchoServerProcess``)."""

    module = "chatcore.benchmark.prefork"
    label = "prefork echo server"
    servers: tuple[str, ...] = SERVERS
    fault_servers: tuple[str, ...] = ()
    available_servers = staticmethod(available_servers)

    def pids(self) -> list[int]:
        """The processes serving: the workers and their parent (the server process itself)."""
        assert self.process is not None
        return [self.process.pid, *_children(self.process.pid)]

    def wait_for_workers(self, deadline: float) -> list[int]:
        """The worker pids, once as many as the server forks are running."""
        wanted = self.info.get("workers") or 0
        assert self.process is not None
        while len(_children(self.process.pid)) < wanted:
            if time.monotonic() >= deadline:
                raise BenchmarkTimeoutError("%s %r never had its %d workers" % (self.label, self.server, wanted))
            time.sleep(0.01)
        return _children(self.process.pid)


def _children(pid: int) -> list[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def process_cpu_seconds(pids: list[int]) -> float:
    """The user plus system CPU time of processes *pids* (Linux /proc; a process gone counts 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as stat:
                # After the command name, which may hold spaces: utime and stime are fields 14 and 15.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def worker_connections(pids: list[int]) -> list[int]:
    """How many TCP connections each process of *pids* holds (its sockets but the listener)."""
    counts = []
    for pid in pids:
        sockets = 0
        try:
            for name in os.listdir("/proc/%d/fd" % pid):
                try:
                    if os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                        sockets += 1
                except OSError:
                    pass
        except OSError:
            pass
        counts.append(max(0, sockets - 1))
    return counts


# --- The clients ---------------------------------------------------------------------


class ConcurrentPingPongClient:
    """*connections* connections, each making *rounds* sequential one-line round trips, all at once.

    Construction prepares the lines and connects; ``run()`` measures and
    closes.  Every echo is compared with its line; the latencies of all
    round trips of all connections make the p50 and p99.
    """

    def __init__(
        self,
        port: int,
        connections: int,
        rounds: int,
        line_size: int = 16,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if connections < 1 or rounds < 1:
            raise ValueError("connections and rounds must be at least 1")
        self.rounds = rounds
        self.line_size = line_size
        self.lines = []
        for index in range(connections):
            stream = expected_stream(index, rounds, line_size)
            self.lines.append([stream[start : start + line_size] for start in range(0, len(stream), line_size)])
        deadline = time.monotonic() + timeout
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(connections):
                self.sockets.append(connect(port, deadline))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> ClientMeasurement:
        deadline = time.monotonic() + timeout
        size = self.line_size
        clock_ns = time.perf_counter_ns
        latencies_ns: list[int] = []
        # Per connection: round number, bytes of its echo received, when it was sent.
        state = [[0, 0, 0] for _ in self.sockets]
        received = [bytearray() for _ in self.sockets]
        selector = selectors.DefaultSelector()
        try:
            started = time.perf_counter()
            for index, sock in enumerate(self.sockets):
                selector.register(sock, selectors.EVENT_READ, index)
                self._send(index, state[index], deadline)
            unfinished = len(self.sockets)
            while unfinished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchmarkTimeoutError(
                        "concurrent ping-pong run did not finish within %.3g s: rounds done %s"
                        % (timeout, [entry[0] for entry in state])
                    )
                for key, _ in selector.select(min(remaining, 1.0)):
                    index = key.data
                    sock = self.sockets[index]
                    try:
                        chunk = sock.recv(4096)
                    except WOULD_BLOCK:
                        continue
                    except OSError as error:
                        raise BenchmarkError("ping-pong connection %d: %s" % (index, error)) from error
                    if not chunk:
                        raise BenchmarkError("the server closed ping-pong connection %d" % index)
                    entry, echo = state[index], received[index]
                    echo += chunk
                    if len(echo) < size:
                        continue
                    latencies_ns.append(clock_ns() - entry[2])
                    line = self.lines[index][entry[0]]
                    if bytes(echo) != line:
                        raise VerificationError(
                            "ping-pong connection %d, round %d: sent %r, got back %r" % (index, entry[0], line, echo)
                        )
                    del echo[:]
                    entry[0] += 1
                    if entry[0] == self.rounds:
                        selector.unregister(sock)
                        unfinished -= 1
                    else:
                        self._send(index, entry, deadline)
            seconds = time.perf_counter() - started
        finally:
            selector.close()
            self.close()
        latencies_ns.sort()
        count = len(latencies_ns)
        return ClientMeasurement(
            "ping-pong",
            len(self.sockets),
            count,
            count * size,
            seconds,
            p50_us=percentile(latencies_ns, 50) / 1000.0,
            p99_us=percentile(latencies_ns, 99) / 1000.0,
        )

    def _send(self, index: int, entry: list[int], deadline: float) -> None:
        line = self.lines[index][entry[0]]
        sock = self.sockets[index]
        entry[2] = time.perf_counter_ns()
        try:
            sent = sock.send(line)
        except WOULD_BLOCK:
            sent = 0
        except OSError as error:
            raise BenchmarkError("ping-pong connection %d: %s" % (index, error)) from error
        if sent < len(line):
            send_rest(sock, line, sent, deadline)


# --- One run -------------------------------------------------------------------------


@dataclasses.dataclass
class PreforkResult(EchoResult):
    """One ``run_prefork_echo``: an ``EchoResult``, and the server's CPU time per echoed line."""

    #: User plus system CPU seconds of the server's processes during the run, per echoed line, in µs.
    server_cpu_us_per_line: float = 0.0
    #: Connections each worker held during the run (the server process itself for "chatcore").
    connections_per_worker: list[int] = dataclasses.field(default_factory=list)


def run_prefork_echo(
    server: str,
    mode: str,
    connections: int,
    lines: int,
    line_size: int = 16,
    timeout: float = DEFAULT_TIMEOUT,
    on_server_started: Optional[Callable[[PreforkEchoServerProcess], None]] = None,
) -> PreforkResult:
    """Start *server* in a subprocess, run one client *mode* against it, stop and reap it.

    *mode* is ``"pipelined"`` (*lines* lines per connection) or
    ``"ping-pong"`` (*lines* round trips per connection, all connections at
    once).  Bounded by *timeout*; a wrong echo raises ``VerificationError``.
    """
    if mode not in MODES:
        raise ValueError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
    deadline = time.monotonic() + timeout
    process = PreforkEchoServerProcess(server, max_seconds=max(DEFAULT_MAX_SECONDS, timeout + 60.0))
    client: Any = None
    try:
        if on_server_started is not None:
            on_server_started(process)
        process.start(startup_timeout=timeout)
        assert process.port is not None
        workers = process.wait_for_workers(deadline)
        remaining = deadline - time.monotonic()
        if mode == "pipelined":
            client = PipelinedClient(process.port, connections, lines, line_size, timeout=remaining)
        else:
            client = ConcurrentPingPongClient(process.port, connections, lines, line_size, timeout=remaining)
        # Every connection accepted before the clock starts, so the spread is known.
        settle = time.monotonic() + min(5.0, max(0.0, deadline - time.monotonic()))
        serving = workers or process.pids()[:1]
        while sum(worker_connections(serving)) < connections and time.monotonic() < settle:
            time.sleep(0.01)
        spread = worker_connections(serving)
        pids = process.pids()
        cpu_before = process_cpu_seconds(pids)
        measurement = client.run(timeout=max(0.0, deadline - time.monotonic()))
        cpu_after = process_cpu_seconds(pids)
    finally:
        if client is not None:
            client.close()
        process.stop()
    return PreforkResult(
        mode=mode,
        connections=measurement.connections,
        messages=measurement.messages,
        bytes=measurement.bytes,
        seconds=measurement.seconds,
        messages_per_s=per_second(measurement.messages, measurement.seconds),
        mb_per_s=per_second(measurement.bytes / 1e6, measurement.seconds),
        p50_us=measurement.p50_us,
        p99_us=measurement.p99_us,
        **process.report(),
        server_cpu_us_per_line=(cpu_after - cpu_before) / max(1, measurement.messages) * 1e6,
        connections_per_worker=spread,
    )


def run_suite(size: str, progress: Callable[[str], None]) -> list[tuple[str, PreforkResult]]:
    """Every mode of ``SETTINGS[size]`` on every server here: (benchmark name, result) pairs, in order.

    Each figure is the fastest of ``PASSES[size]`` runs, the servers taking
    turns, so that a burst of other work on a shared machine hits one run,
    not one server.
    """
    results = []
    for mode, connections, lines in SETTINGS[size]:
        benchmark = "prefork echo %s, %d connections" % (mode, connections)
        fastest: dict[str, PreforkResult] = {}
        for _ in range(PASSES[size]):
            for server in available_servers():
                result = run_prefork_echo(server, mode, connections, lines)
                if server not in fastest or result.seconds < fastest[server].seconds:
                    fastest[server] = result
        for server, result in fastest.items():
            results.append((benchmark, result))
            latency = ""
            if result.p50_us is not None and result.p99_us is not None:
                latency = "  p50 %.0f us, p99 %.0f us" % (result.p50_us, result.p99_us)
            progress(
                "  %-36s %-10s %10.0f msg/s%s  server CPU %.2f us/line, connections per process %s"
                % (
                    benchmark,
                    server,
                    result.messages_per_s,
                    latency,
                    result.server_cpu_us_per_line,
                    "+".join(map(str, result.connections_per_worker)),
                )
            )
    return results


# --- Command line --------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.prefork serve ...``: run one server."""
    return serve_main(argv, PreforkEchoServerProcess, "Server side of chatcore's prefork echo benchmark.", serve)


if __name__ == "__main__":
    sys.exit(main())
