"""Loopback echo from ``chatcore.prefork()`` workers: a plain loop, 1 worker and 2 workers side by side.

The servers of ``chatcore.benchmark.prefork`` (``chatcore``: ``loop()`` in
the server process; ``prefork-1`` and ``prefork-2``: that many forked
workers), one pytest-benchmark group per client mode:

* ``prefork echo pipelined``: 8 connections each echoing 50 000 lines of
  16 bytes (times CHATCORE_BENCH_SCALE);
* ``prefork echo ping-pong``: 8 connections at once, each making 2 000
  sequential one-line round trips (times the scale).

The load client shares the machine's cores with the workers, so
``extra_info`` also holds the server's CPU time per echoed line over all
rounds (``server_cpu_us_per_line``: its processes' user and system time from
/proc); ``python -m chatcore bench --suite prefork`` also says how many
connections each worker held.

    python -m pytest benchmarks/test_prefork.py --benchmark-columns=min,median,rounds
"""

import time
from collections.abc import Iterator

import pytest
from test_echo import LINE_SIZE, record, scaled

from chatcore.benchmark.echo import PipelinedClient
from chatcore.benchmark.prefork import (
    PING_PONG_CONNECTIONS,
    PIPELINED_CONNECTIONS,
    ConcurrentPingPongClient,
    PreforkEchoServerProcess,
    available_servers,
    process_cpu_seconds,
)

pytestmark = [
    pytest.mark.loopback,
    pytest.mark.skipif(not available_servers(), reason="prefork needs os.fork() and /proc"),
]

PIPELINED_LINES = 50_000  # per connection, at scale 1
PING_PONG_ROUNDS = 2_000  # per connection, at scale 1


@pytest.fixture(params=available_servers())
def prefork_server(request) -> Iterator[PreforkEchoServerProcess]:
    with PreforkEchoServerProcess(request.param) as server:
        server.wait_for_workers(time.monotonic() + 30.0)
        yield server


def measure(benchmark, server: PreforkEchoServerProcess, client_rounds, make_client, messages: int) -> None:
    """Time the rounds of *make_client*'s clients, each echoing *messages* lines; record them and the server's CPU."""
    cpu_before = process_cpu_seconds(server.pids())
    measurements = client_rounds(make_client)
    cpu = process_cpu_seconds(server.pids()) - cpu_before
    assert all(m.messages == messages for m in measurements)
    record(benchmark, server, measurements)
    benchmark.extra_info.update(server_cpu_us_per_line=cpu / (messages * len(measurements)) * 1e6)


def test_prefork_echo_pipelined(benchmark, scale, prefork_server, client_rounds):
    lines = scaled(PIPELINED_LINES, scale)
    benchmark.group = "prefork echo pipelined, %d connections x %d lines of %d B" % (
        PIPELINED_CONNECTIONS,
        lines,
        LINE_SIZE,
    )

    def make_client(timeout: float) -> PipelinedClient:
        return PipelinedClient(prefork_server.port, PIPELINED_CONNECTIONS, lines, LINE_SIZE, timeout=timeout)

    measure(benchmark, prefork_server, client_rounds, make_client, PIPELINED_CONNECTIONS * lines)


def test_prefork_echo_ping_pong(benchmark, scale, prefork_server, client_rounds):
    rounds = scaled(PING_PONG_ROUNDS, scale)
    benchmark.group = "prefork echo ping-pong, %d connections x %d round trips of %d B" % (
        PING_PONG_CONNECTIONS,
        rounds,
        LINE_SIZE,
    )

    def make_client(timeout: float) -> ConcurrentPingPongClient:
        return ConcurrentPingPongClient(prefork_server.port, PING_PONG_CONNECTIONS, rounds, LINE_SIZE, timeout=timeout)

    measure(benchmark, prefork_server, client_rounds, make_client, PING_PONG_CONNECTIONS * rounds)
