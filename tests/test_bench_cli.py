"""``python -m chatcore bench``: the table, the ratios, --json and --plot.

Behaviour only: the figures themselves are never asserted (this machine's
timings wander); their consistency is.
"""

import json
import subprocess
import sys

import pytest

from chatcore.benchmark import cli, framing


def _row(benchmark, implementation, seconds, suite="framing", messages=1000):
    return cli.Row(suite, benchmark, implementation, messages, seconds, messages * 16)


def test_ratios_use_the_stdlib_row_of_the_same_benchmark():
    rows = [
        _row("a", "chatcore-cython", 1.0),
        _row("a", "stdlib-asynchat", 3.0),
        _row("a", "asyncio-streams", 2.0),
        _row("b", "chatcore-cython", 1.0),
        _row("b", "stdlib-asynchat", 5.0),
    ]
    speedups = cli.ratios(rows)
    assert [speedups[row] for row in rows] == [3.0, 1.0, 1.5, 5.0, 1.0]
    assert cli.baseline_name(rows) == "stdlib asynchat/asyncore"


def test_ratios_fall_back_to_asyncio_without_stdlib():
    rows = [
        _row("a", "chatcore-cython", 1.0),
        _row("a", "asyncio-streams", 2.0),
        _row("e", "chatcore", 1.0, suite="echo"),
        _row("e", "asyncio", 4.0, suite="echo"),
    ]
    speedups = cli.ratios(rows)
    assert [speedups[row] for row in rows] == [2.0, 1.0, 4.0, 1.0]
    assert cli.baseline_name(rows) == "asyncio"
    table = cli.format_table(rows)
    assert "vs asyncio" in table and "2.00x" in table and "4.00x" in table


def test_ratio_is_per_message_not_per_run():
    rows = [_row("a", "chatcore-cython", 1.0, messages=2000), _row("a", "stdlib-asynchat", 1.0)]
    assert cli.ratios(rows)[rows[0]] == 2.0


def test_quick_framing_run_writes_json_and_reports_the_plot(tmp_path):
    json_path = tmp_path / "bench.json"
    plot_path = tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "chatcore", "bench", "--quick", "--suite", "framing",
         "--json", str(json_path), "--plot", str(plot_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("chatcore bench (quick): ")
    assert "| benchmark" in out and "| chatcore-python" in out
    data = json.loads(json_path.read_text())
    assert data["mode"] == "quick" and data["machine"]["cores"]
    names = {row["implementation"] for row in data["results"]}
    assert set(framing.implementations()) == names
    for row in data["results"]:
        assert row["messages"] > 0 and row["seconds"] > 0
        assert row["ratio_to_baseline"] is not None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart: matplotlib is not installed" in out
        assert not plot_path.exists()
    else:
        assert plot_path.read_bytes().startswith(b"\x89PNG")


def test_bench_rejects_quick_and_full_together():
    proc = subprocess.run([sys.executable, "-m", "chatcore", "bench", "--quick", "--full"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 2


@pytest.mark.parametrize("workload", sorted(framing.WORKLOADS))
def test_a_wrong_framing_result_fails_the_run(workload):
    def lying_runner(reads, read_size, protocol):
        protocol.messages = protocol.expected_messages + 1
        return 0.001

    with pytest.raises(AssertionError):
        framing.run_once(workload, "liar", 65536, 0.001, lying_runner)
