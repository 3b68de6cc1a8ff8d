"""Settings shared by the pytest-benchmark suites in this folder.

CHATCORE_BENCH_SCALE multiplies every workload size.  Unset, it is 1.0 (the
issue-sized workloads) when timing, and 0.001 with ``--benchmark-disable``,
the smoke run ``.ci/run`` makes so these files cannot rot.  ``client_rounds``
times the loopback clients (echo, SMTP) against a server started once.
"""

import os
from typing import Any, Callable

import pytest

SMOKE_SCALE = 0.001


@pytest.fixture(scope="session")
def scale(pytestconfig) -> float:
    configured = os.environ.get("CHATCORE_BENCH_SCALE")
    if configured:
        return float(configured)
    return SMOKE_SCALE if pytestconfig.getoption("benchmark_disable") else 1.0


#: Timed client runs per loopback test, after one warm-up run.
CLIENT_ROUNDS = 3
#: Per client run; far above any expected duration, it only bounds a hung server.
RUN_TIMEOUT = 120.0


@pytest.fixture
def client_rounds(benchmark) -> Callable[[Callable[[], Any]], list[Any]]:
    """``client_rounds(make_client)``: time ``client.run()`` of fresh clients; each round's result.

    A client is made (connected, its script built) in the untimed setup of
    each round; every client's sockets are closed even when a round fails.
    """

    def run(make_client: Callable[[], Any]) -> list[Any]:
        clients: list[Any] = []
        measurements: list[Any] = []

        def setup() -> Any:
            client = make_client()
            clients.append(client)
            return (client,), {}

        def one_run(client: Any) -> Any:
            measurement = client.run(timeout=RUN_TIMEOUT)
            measurements.append(measurement)
            return measurement

        try:
            benchmark.pedantic(one_run, setup=setup, rounds=CLIENT_ROUNDS, warmup_rounds=1, iterations=1)
        finally:
            # A client closes its sockets when it runs; these never ran if a round failed.
            for client in clients:
                client.close()
        return measurements

    return run
