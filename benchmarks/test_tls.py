"""Loopback TLS 1.3 echo servers side by side: chatcore's start_tls, asyncio's and uvloop's TLS transports.

The echo benchmark (test_echo.py) over TLS: one pytest-benchmark group per
client mode, comparing the servers of ``chatcore.benchmark.tls``
(``available_servers()``: chatcore, asyncio, uvloop when installed; none,
so the tests are skipped, without trustme, which makes the certificates).

* ``TLS echo pipelined``: 4 connections each echoing 100 000 lines of 16
  bytes (times CHATCORE_BENCH_SCALE);
* ``TLS echo ping-pong``: 5 000 sequential one-line round trips (times the scale).

The server runs in its own process, started once per test (hence the
``loopback`` mark, see conftest.py); a timed round is one client run
(connecting, the TLS handshakes and building the expected streams happen in
the untimed setup).  Every round checks every echoed byte; ``extra_info``
is test_echo.py's.

    python -m pytest benchmarks/test_tls.py --benchmark-columns=min,median,rounds
"""

from collections.abc import Iterator

import pytest
from test_echo import LINE_SIZE, PING_PONG_ROUNDS, PIPELINED_CONNECTIONS, PIPELINED_LINES, record, scaled

from chatcore.benchmark.echo import PingPongClient, PipelinedClient
from chatcore.benchmark.tls import TLSEchoServerProcess, available_servers, unavailable_reason

pytestmark = [
    pytest.mark.loopback,
    pytest.mark.skipif(unavailable_reason() is not None, reason="TLS benchmark: %s" % unavailable_reason()),
]


@pytest.fixture(params=available_servers())
def tls_server(request) -> Iterator[TLSEchoServerProcess]:
    with TLSEchoServerProcess(request.param) as server:
        yield server


def test_tls_echo_pipelined(benchmark, scale, tls_server, client_rounds):
    lines = scaled(PIPELINED_LINES, scale)
    benchmark.group = "TLS 1.3 echo pipelined, %d connections x %d lines of %d B" % (
        PIPELINED_CONNECTIONS,
        lines,
        LINE_SIZE,
    )
    connector = tls_server.connector()

    def make_client(timeout: float) -> PipelinedClient:
        return PipelinedClient(
            tls_server.port, PIPELINED_CONNECTIONS, lines, LINE_SIZE, timeout=timeout, connector=connector
        )

    measurements = client_rounds(make_client)
    assert all(m.messages == PIPELINED_CONNECTIONS * lines for m in measurements)
    record(benchmark, tls_server, measurements)


def test_tls_echo_ping_pong(benchmark, scale, tls_server, client_rounds):
    rounds = scaled(PING_PONG_ROUNDS, scale)
    benchmark.group = "TLS 1.3 echo ping-pong, %d round trips of %d B" % (rounds, LINE_SIZE)
    connector = tls_server.connector()

    def make_client(timeout: float) -> PingPongClient:
        return PingPongClient(tls_server.port, rounds, LINE_SIZE, timeout=timeout, connector=connector)

    measurements = client_rounds(make_client)
    assert all(m.messages == rounds for m in measurements)
    record(benchmark, tls_server, measurements)
