"""Settings shared by the pytest-benchmark suites in this folder.

CHATCORE_BENCH_SCALE multiplies every workload size.  Unset, it is 1.0 (the
issue-sized workloads) when timing, and 0.001 with ``--benchmark-disable``,
the smoke run ``.ci/run`` makes so these files cannot rot.
"""

import os

import pytest

SMOKE_SCALE = 0.001


@pytest.fixture(scope="session")
def scale(pytestconfig) -> float:
    configured = os.environ.get("CHATCORE_BENCH_SCALE")
    if configured:
        return float(configured)
    return SMOKE_SCALE if pytestconfig.getoption("benchmark_disable") else 1.0
