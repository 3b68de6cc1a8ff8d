"""One chatcore echo server on chatcore.loop() and through chatcore.aio on asyncio and on uvloop.

The echo benchmark (test_echo.py) with a single server body, the
push-per-line ``chatcore.async_chat`` handler, served by each of
``chatcore.benchmark.aio.available_servers()``: ``chatcore``
(``chatcore.loop()``), ``aio-asyncio`` and ``aio-uvloop`` (``await
chatcore.aio.loop()`` on that event loop, uvloop when installed).  One
pytest-benchmark group per client mode, so the table compares the three;
the sizes, the rounds and ``extra_info`` are test_echo.py's.

    python -m pytest benchmarks/test_aio.py --benchmark-columns=min,median,rounds
"""

from collections.abc import Iterator

import pytest
from test_echo import LINE_SIZE, PING_PONG_ROUNDS, PIPELINED_CONNECTIONS, PIPELINED_LINES, record, scaled

from chatcore.benchmark.aio import AioEchoServerProcess, available_servers
from chatcore.benchmark.echo import PingPongClient, PipelinedClient

pytestmark = pytest.mark.loopback


@pytest.fixture(params=available_servers())
def aio_server(request) -> Iterator[AioEchoServerProcess]:
    with AioEchoServerProcess(request.param) as server:
        yield server


def test_aio_echo_pipelined(benchmark, scale, aio_server, client_rounds):
    lines = scaled(PIPELINED_LINES, scale)
    benchmark.group = "echo via chatcore.aio pipelined, %d connections x %d lines of %d B" % (
        PIPELINED_CONNECTIONS,
        lines,
        LINE_SIZE,
    )

    def make_client(timeout: float) -> PipelinedClient:
        return PipelinedClient(aio_server.port, PIPELINED_CONNECTIONS, lines, LINE_SIZE, timeout=timeout)

    measurements = client_rounds(make_client)
    assert all(m.messages == PIPELINED_CONNECTIONS * lines for m in measurements)
    record(benchmark, aio_server, measurements)


def test_aio_echo_ping_pong(benchmark, scale, aio_server, client_rounds):
    rounds = scaled(PING_PONG_ROUNDS, scale)
    benchmark.group = "echo via chatcore.aio ping-pong, %d round trips of %d B" % (rounds, LINE_SIZE)

    def make_client(timeout: float) -> PingPongClient:
        return PingPongClient(aio_server.port, rounds, LINE_SIZE, timeout=timeout)

    measurements = client_rounds(make_client)
    assert all(m.messages == rounds for m in measurements)
    record(benchmark, aio_server, measurements)
