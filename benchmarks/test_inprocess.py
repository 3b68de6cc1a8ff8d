"""The per-event path in one process: each workload x send timing x framing engine.

The workloads of ``chatcore.benchmark.inprocess``, the ones the regression
gate counts instructions of: an SMTP session of the unchanged legacy server
(1 000 transactions at scale 1, one command and one loop turn at a time) and
pipelined push-per-line echo (250 batches of 256 lines), each on a socket
pair served by ``poll(0.0, map)``, every reply checked.  ``compat`` runs them
on chatcore.compat's modules (stdlib send timing), ``chatcore`` on chatcore's
own API under the legacy names (coalesced sends); each on the compiled engine
and on its pure-Python twin (``inprocess.on_engine``), so one run, CodSpeed's
included, covers both.  Rows of one workload share a pytest-benchmark group.

A timed round is one whole ``run_once``, loading the server module and
making the socket pair included; ``extra_info`` holds the rate of the
fastest run's exchanges alone, as the harness times them.

    python -m pytest benchmarks/test_inprocess.py --benchmark-columns=min,median,rounds
"""

import pytest

from chatcore.benchmark import framing, inprocess

ENGINES = framing.engines()


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("api", inprocess.APIS)
@pytest.mark.parametrize("workload", sorted(inprocess.WORKLOADS))
def test_inprocess(benchmark, timed_rounds, scale, workload, api, engine):
    modules = inprocess.on_engine(inprocess.api_modules(api), ENGINES[engine])
    count = inprocess.count_at(workload, scale)
    benchmark.group = "in-process %s x %d: %s" % (workload, count, inprocess.WORKLOADS[workload].description)

    def one_run() -> float:
        return inprocess.run_once(workload, api, scale, modules)

    fastest = min(timed_rounds(one_run))
    benchmark.extra_info.update(count=count, exchange_seconds=fastest, per_s=count / fastest)
