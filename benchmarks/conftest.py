"""Settings shared by the pytest-benchmark suites in this folder.

CHATCORE_BENCH_SCALE (default 1.0) multiplies every workload size: the
issue-sized workloads at 1.0, a smoke run at 0.001 (what ``.ci/run`` uses
with ``--benchmark-disable`` so these files cannot rot).
"""

import os

import pytest


def bench_scale() -> float:
    return float(os.environ.get("CHATCORE_BENCH_SCALE", "1.0"))


@pytest.fixture(scope="session")
def scale() -> float:
    return bench_scale()
