"""Request/response: one legacy SMTP server module, unchanged, on each asyncore.

One pytest-benchmark group, one row per server of
``chatcore.benchmark.smtp.available_servers()``: ``chatcore`` (the module
given chatcore's own API: pushes coalesced to the end of a loop turn),
``chatcore-compat`` (``chatcore.compat.install()`` before the import: stdlib
send timing) and the legacy modules this Python has (``stdlib`` up to 3.11,
``pyasynchat`` on 3.12+ when installed).

A timed round is one client run: 4 connections, each an SMTP session of
1 000 transactions (times CHATCORE_BENCH_SCALE) of MAIL FROM, RCPT TO, DATA,
a ~1 KiB body and RSET, one command at a time, every reply compared byte for
byte.  The server runs in its own process, started once per test (hence the
``loopback`` mark, see conftest.py); connecting and building the scripts
happen in the untimed setup.  ``extra_info`` holds commands/s, transactions/s
and p50/p99 per command (microseconds) of the fastest round, and what served
with its measured send timing.

    python -m pytest benchmarks/test_smtp.py --benchmark-columns=min,median,rounds
    CHATCORE_BENCH_SCALE=0.01 python -m pytest benchmarks/test_smtp.py --benchmark-disable
"""

from collections.abc import Iterator

import pytest

from chatcore.benchmark.smtp import SMTPClient, SMTPMeasurement, SMTPServerProcess, available_servers

pytestmark = pytest.mark.loopback

CONNECTIONS = 4
TRANSACTIONS = 1_000  # per connection, at scale 1


@pytest.fixture(params=available_servers())
def smtp_server(request) -> Iterator[SMTPServerProcess]:
    with SMTPServerProcess(request.param) as server:
        yield server


def test_smtp_request_response(benchmark, scale, smtp_server, client_rounds):
    transactions = max(2, int(TRANSACTIONS * scale))
    benchmark.group = "smtp, %d connections x %d transactions, one command at a time" % (CONNECTIONS, transactions)

    def make_client(timeout: float) -> SMTPClient:
        return SMTPClient(smtp_server.port, CONNECTIONS, transactions, timeout=timeout)

    measurements: list[SMTPMeasurement] = client_rounds(make_client)
    # HELO and QUIT, then five commands a transaction, on every connection.
    assert all(m.commands == CONNECTIONS * (2 + 5 * transactions) for m in measurements)
    fastest = min(measurements, key=lambda measurement: measurement.seconds)
    benchmark.extra_info.update(
        smtp_server.report(),
        connections=fastest.connections,
        transactions=fastest.transactions,
        commands=fastest.commands,
        commands_per_s=fastest.commands / fastest.seconds,
        transactions_per_s=fastest.transactions / fastest.seconds,
        p50_us=fastest.p50_us,
        p99_us=fastest.p99_us,
    )
