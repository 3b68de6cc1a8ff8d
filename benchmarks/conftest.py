"""Settings shared by the benchmark suites in this folder.

They run under pytest-benchmark (tables on this machine) or, with
``--codspeed``, under pytest-codspeed (the CodSpeed workflow,
``.github/workflows/codspeed.yml``), which takes the ``benchmark`` fixture
over and runs one measured round of each.

CHATCORE_BENCH_SCALE multiplies every workload size.  Unset, it is 1.0 (the
sizes each suite's docstring gives) when timing, 0.001 with
``--benchmark-disable`` (the smoke run ``.ci/run`` makes so these files
cannot rot) and ``CODSPEED_SCALE`` under CodSpeed.

The loopback suites (``test_echo``, ``test_smtp``) are marked ``loopback``:
their servers run in child processes, which CodSpeed's CPU simulation does
not measure, so its workflow leaves them out (``-m "not loopback"``).
``timed_rounds`` times every benchmark here the same way; ``client_rounds``
times the loopback clients against a server started once.
"""

import os
from typing import Any, Callable, Optional

import pytest

SMOKE_SCALE = 0.001
#: The size CodSpeed measures.  Under CPU simulation (valgrind) a benchmark
#: runs tens of times slower: at this size the 64 in-process benchmarks took
#: under five minutes under callgrind here, each pass instrumented (the
#: longest, stdlib asynchat on 16-byte lines in 64 KiB reads, 100 s), and a
#: run's fixed costs stay under 5% of its count (an SMTP session: 1.1 M of
#: 28 M instructions; pipelined echo: 0.4 M of 25 M).
CODSPEED_SCALE = 0.05


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "loopback: the server runs in a child process over loopback TCP (not measured by CodSpeed)"
    )
    # The suites ask pytest-benchmark for a few rounds; CodSpeed's CPU
    # simulation measures exactly one and says so for every benchmark.
    config.addinivalue_line(
        "filterwarnings", r"ignore:\w+ instrument ignores rounds and iterations settings:UserWarning"
    )


def _codspeed(config: pytest.Config) -> bool:
    """Whether pytest-codspeed measures this run (its own test: the flag, or the CodSpeed runner)."""
    return bool(config.getoption("codspeed", default=False)) or "CODSPEED_ENV" in os.environ


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> float:
    configured = os.environ.get("CHATCORE_BENCH_SCALE")
    if configured:
        return float(configured)
    if _codspeed(pytestconfig):
        return CODSPEED_SCALE
    return SMOKE_SCALE if pytestconfig.getoption("benchmark_disable", default=False) else 1.0


#: Timed rounds of every benchmark here, after one warm-up round
#: (pytest-benchmark; CodSpeed's simulation measures one).
ROUNDS = 3
#: Per loopback client, for connecting and for its run; far above any
#: expected duration, it only bounds a hung server.
CLIENT_TIMEOUT = 120.0


@pytest.fixture
def timed_rounds(benchmark) -> Callable[..., list[Any]]:
    """``timed_rounds(run, setup=None)``: time ``run(*args)``; every call's result, the warm-up's first.

    *setup*, when given, runs untimed before each call and returns its
    ``(args, kwargs)``, as in ``benchmark.pedantic``.
    """

    def time_rounds(run: Callable[..., Any], setup: Optional[Callable[[], Any]] = None) -> list[Any]:
        results: list[Any] = []

        def one_round(*args: Any, **kwargs: Any) -> Any:
            result = run(*args, **kwargs)
            results.append(result)
            return result

        benchmark.pedantic(one_round, setup=setup, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        return results

    return time_rounds


@pytest.fixture
def client_rounds(timed_rounds) -> Callable[[Callable[[float], Any]], list[Any]]:
    """``client_rounds(make_client)``: time ``client.run()`` of fresh clients; each run's result.

    ``make_client(timeout)`` makes a client (connected, its script built,
    connecting bounded by *timeout*) in the untimed setup of each round;
    every client's sockets are closed even when a round fails.
    """

    def run(make_client: Callable[[float], Any]) -> list[Any]:
        clients: list[Any] = []

        def setup() -> Any:
            client = make_client(CLIENT_TIMEOUT)
            clients.append(client)
            return (client,), {}

        try:
            return timed_rounds(lambda client: client.run(timeout=CLIENT_TIMEOUT), setup)
        finally:
            # A client closes its sockets when it runs; these never ran if a round failed.
            for client in clients:
                client.close()

    return run
