"""Serving one file over loopback: ``push_file`` (sendfile), a read-and-push producer, asyncio, uvloop.

The servers of ``chatcore.benchmark.files`` (``available_servers()``), each
in its own process, started once per test; a timed round is one transfer of
a 1 GiB file (times CHATCORE_BENCH_SCALE: 1 MiB in the ``--benchmark-disable``
smoke run), made in a temporary directory and deleted afterwards.  The
client checks every transfer's length and ends; ``extra_info`` has the
GB/s of the fastest round and the server's CPU seconds per GiB over all
of them.

    python -m pytest benchmarks/test_files.py --benchmark-columns=min,median,rounds
"""

import tempfile
from collections.abc import Iterator

import pytest
from conftest import CLIENT_TIMEOUT

from chatcore.benchmark.files import FileClient, FileServerProcess, available_servers, make_file

pytestmark = pytest.mark.loopback

FILE_SIZE = 1 << 30


@pytest.fixture(scope="module")
def served_file(scale) -> Iterator[tuple[str, int]]:
    size = max(1 << 16, int(FILE_SIZE * scale))
    with tempfile.TemporaryDirectory(prefix="chatcore-files-") as directory:
        yield make_file(directory, size), size


@pytest.fixture(params=available_servers())
def file_server(request) -> Iterator[FileServerProcess]:
    with FileServerProcess(request.param) as server:
        yield server


def test_serve_a_file(benchmark, timed_rounds, served_file, file_server):
    path, size = served_file
    benchmark.group = "serve a %d MiB file over one loopback connection" % (size >> 20)
    client = FileClient(file_server.port, path, size, CLIENT_TIMEOUT)
    try:
        cpu_before = client.server_cpu()
        seconds = timed_rounds(client.transfer)
        cpu = client.server_cpu() - cpu_before
    finally:
        client.close()
    benchmark.extra_info.update(
        file_server.report(),
        gb_per_s=size / min(seconds) / 1e9,
        server_cpu_s_per_gib=cpu / len(seconds) * (1 << 30) / size,
    )
