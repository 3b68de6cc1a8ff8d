"""Loopback echo servers side by side: chatcore, legacy asyncore, asyncio, uvloop.

One pytest-benchmark group per client mode, so the table compares the servers
available on this Python (``chatcore.benchmark.echo.available_servers()``):
``chatcore`` (pushes coalesced to the end of a loop turn) and
``chatcore-compat`` (each push sent at once, stdlib's timing), the legacy
modules this Python has (``stdlib`` up to 3.11, ``pyasynchat`` on 3.12+ when
installed), asyncio and uvloop.

* ``echo pipelined``: 4 connections each echoing 100 000 lines of 16 bytes
  (times CHATCORE_BENCH_SCALE), at most ``PIPELINE_WINDOW`` bytes in flight;
* ``echo ping-pong``: 5 000 sequential one-line round trips (times the scale).

The server runs in its own process, started once per test (hence the
``loopback`` mark, see conftest.py); a timed round is one client run
(connecting and building the expected streams happen in the untimed setup).
Every round checks every echoed byte.  ``extra_info`` holds messages/s and
MB/s of the fastest round and, for ping-pong, that round's p50/p99 round-trip
latency in microseconds, and the send timing the server measured before
listening (with ``ac_coalesce_sends`` for chatcore's).

    python -m pytest benchmarks/test_echo.py --benchmark-columns=min,median,rounds
    CHATCORE_BENCH_SCALE=0.01 python -m pytest benchmarks/test_echo.py --benchmark-disable
"""

from collections.abc import Iterator

import pytest

from chatcore.benchmark.echo import (
    ClientMeasurement,
    EchoServerProcess,
    PingPongClient,
    PipelinedClient,
    available_servers,
)

pytestmark = pytest.mark.loopback

PIPELINED_CONNECTIONS = 4
PIPELINED_LINES = 100_000  # per connection, at scale 1
PING_PONG_ROUNDS = 5_000  # at scale 1
LINE_SIZE = 16


def scaled(count: int, scale: float, minimum: int = 10) -> int:
    return max(minimum, int(count * scale))


@pytest.fixture(params=available_servers())
def echo_server(request) -> Iterator[EchoServerProcess]:
    with EchoServerProcess(request.param) as server:
        yield server


def record(benchmark, echo_server: EchoServerProcess, measurements: list[ClientMeasurement]) -> None:
    fastest = min(measurements, key=lambda measurement: measurement.seconds)
    benchmark.extra_info.update(
        echo_server.report(),
        connections=fastest.connections,
        messages=fastest.messages,
        messages_per_s=fastest.messages / fastest.seconds,
        mb_per_s=fastest.bytes / fastest.seconds / 1e6,
        p50_us=fastest.p50_us,
        p99_us=fastest.p99_us,
    )


def test_echo_pipelined(benchmark, scale, echo_server, client_rounds):
    lines = scaled(PIPELINED_LINES, scale)
    benchmark.group = "echo pipelined, %d connections x %d lines of %d B" % (PIPELINED_CONNECTIONS, lines, LINE_SIZE)

    def make_client(timeout: float) -> PipelinedClient:
        return PipelinedClient(echo_server.port, PIPELINED_CONNECTIONS, lines, LINE_SIZE, timeout=timeout)

    measurements = client_rounds(make_client)
    assert all(m.messages == PIPELINED_CONNECTIONS * lines for m in measurements)
    record(benchmark, echo_server, measurements)


def test_echo_ping_pong(benchmark, scale, echo_server, client_rounds):
    rounds = scaled(PING_PONG_ROUNDS, scale)
    benchmark.group = "echo ping-pong, %d round trips of %d B" % (rounds, LINE_SIZE)

    def make_client(timeout: float) -> PingPongClient:
        return PingPongClient(echo_server.port, rounds, LINE_SIZE, timeout=timeout)

    measurements = client_rounds(make_client)
    assert all(m.messages == rounds for m in measurements)
    record(benchmark, echo_server, measurements)
