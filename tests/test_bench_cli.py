"""``python -m chatcore bench``: the table, the ratios, --json and --plot.

Behaviour only: the figures themselves are never asserted (this machine's
timings wander); their consistency is.
"""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

import chatcore
from chatcore.benchmark import cli, echo, framing, smtp


def _row(benchmark, implementation, seconds, suite="framing", messages=1000, detail=None):
    return cli.Row(suite, benchmark, implementation, messages, seconds, messages * 16, detail=detail)


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


def test_ratios_use_pyasynchat_where_it_is_the_legacy_row():
    rows = [
        _row("a", "chatcore-cython", 1.0),
        _row("a", "pyasynchat", 3.0),
        _row("a", "asyncio-streams", 2.0),
        _row("e", "chatcore", 1.0, suite="echo"),
        _row("e", "chatcore-compat", 2.0, suite="echo"),
        _row("e", "pyasynchat", 4.0, suite="echo"),
        _row("e", "asyncio", 8.0, suite="echo"),
    ]
    speedups = cli.ratios(rows)
    assert [speedups[row] for row in rows] == [3.0, 1.0, 1.5, 4.0, 2.0, 1.0, 0.5]
    assert cli.baseline_name(rows) == "pyasynchat/pyasyncore"
    assert "vs pyasynchat/pyasyncore" in cli.format_table(rows)


def test_a_ratio_against_a_fallback_baseline_names_it():
    # select()-bound legacy servers sit out the idle-connection benchmark.
    rows = [
        _row("e", "chatcore", 1.0, suite="echo"),
        _row("e", "stdlib", 2.0, suite="echo"),
        _row("idle", "chatcore", 1.0, suite="echo"),
        _row("idle", "asyncio", 3.0, suite="echo"),
    ]
    table = cli.format_table(rows).splitlines()
    assert "vs stdlib asynchat/asyncore" in table[0]
    assert "2.00x" in table[2] and " vs " not in table[2].split("|")[5]
    assert "3.00x vs asyncio" in table[4]
    assert [row["baseline_implementation"] for row in cli.to_json(rows, "quick", {})["results"]] == [
        "stdlib",
        "stdlib",
        "asyncio",
        "asyncio",
    ]


def test_server_notes_list_each_echo_server_once():
    rows = [
        _row("a", "chatcore-cython", 1.0),
        _row("e", "chatcore", 1.0, suite="echo", detail="chatcore.async_chat, ac_coalesce_sends=True"),
        _row("f", "chatcore", 1.0, suite="echo", detail="chatcore.async_chat, ac_coalesce_sends=True"),
        _row("e", "asyncio", 1.0, suite="echo", detail="asyncio"),
    ]
    assert cli.server_notes(rows) == ["chatcore: chatcore.async_chat, ac_coalesce_sends=True", "asyncio: asyncio"]


def test_floor_ratios_are_time_per_message_over_the_floor_of_the_same_benchmark():
    rows = [
        _row("a", "chatcore-cython", 3.0),
        _row("a", framing.FLOOR, 2.0, messages=2000),
        _row("a", "stdlib-asynchat", 8.0),
        _row("b", "chatcore-cython", 1.0),  # no floor here
        _row("e", "chatcore", 1.0, suite="echo"),
    ]
    over = cli.floor_ratios(rows)
    assert over == {rows[0]: 3.0, rows[1]: 1.0, rows[2]: 8.0}
    assert cli.floor_notes(rows) == ["a: 3.00x"]


def test_server_notes_are_per_suite():
    rows = [
        _row("e", "chatcore", 1.0, suite="echo", detail="echo detail"),
        _row("s", "chatcore", 1.0, suite="smtp", detail="smtp detail"),
    ]
    assert cli.server_notes(rows) == ["chatcore: echo detail"]
    assert cli.server_notes(rows, "smtp") == ["chatcore: smtp detail"]


def test_ratio_is_per_message_not_per_run():
    rows = [_row("a", "chatcore-cython", 1.0, messages=2000), _row("a", "stdlib-asynchat", 1.0)]
    assert cli.ratios(rows)[rows[0]] == 2.0


def test_quick_run_writes_json_and_reports_the_plot(tmp_path):
    json_path = tmp_path / "bench.json"
    plot_path = tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, "-m", "chatcore", "bench", "--quick", "--json", str(json_path), "--plot", str(plot_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("chatcore bench (quick): ")
    assert "| benchmark" in out and "| chatcore-python" in out
    data = json.loads(json_path.read_text())
    assert data["mode"] == "quick" and data["machine"]["cores"]
    # Found by file, not imported here: this process keeps its sys.modules clean.
    origin = framing.legacy_origin()
    framing_names = {row["implementation"] for row in data["results"] if row["suite"] == "framing"}
    assert {"chatcore-python", "chatcore-messages", "asyncio-streams"} <= framing_names
    echo_names = {row["implementation"] for row in data["results"] if row["suite"] == "echo"}
    assert set(echo.available_servers()) == echo_names
    if origin is None:
        assert data["baseline"] == "asyncio"
        assert not framing_names & set(framing.LEGACY_ROWS.values())
    else:
        # The legacy row this Python really has, under its own name, is the baseline.
        assert framing_names & set(framing.LEGACY_ROWS.values()) == {framing.LEGACY_ROWS[origin]}
        assert echo_names & set(echo.LEGACY_SERVERS.values()) == {echo.LEGACY_SERVERS[origin]}
        assert data["baseline"] == {"stdlib": "stdlib asynchat/asyncore", "pyasynchat": "pyasynchat/pyasyncore"}[origin]
        assert "vs " + data["baseline"] in out
    benchmarks = {row["benchmark"] for row in data["results"] if row["suite"] == "echo"}
    assert len(benchmarks) == 2  # pipelined and ping-pong, every server in each
    smtp_rows = [row for row in data["results"] if row["suite"] == "smtp"]
    assert [row["implementation"] for row in smtp_rows] == smtp.available_servers()
    assert all("legacy_smtpd.py unchanged" in row["detail"] for row in smtp_rows)
    assert "\nsmtp servers:\n" in out
    floors = [row for row in data["results"] if row["implementation"] == framing.FLOOR]
    assert [row["benchmark"] for row in floors] == ["lines16 @ 64 KiB reads"]  # smtp64k has none
    cython = [row for row in data["results"] if row["implementation"] == "chatcore-cython"]
    assert all((row["time_over_floor"] is None) == (row["benchmark"] != floors[0]["benchmark"]) for row in cython)
    assert "handler floor" in out and "  lines16 @ 64 KiB reads: " in out
    for row in data["results"]:
        assert row["messages"] > 0 and row["seconds"] > 0
        assert row["ratio_to_baseline"] is not None
    for name in echo.CHATCORE_SEND_MODES:
        assert "  %s: chatcore " % name in out and "ac_coalesce_sends=" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no chart: matplotlib is not installed" in out
        assert not plot_path.exists()
    else:
        assert plot_path.read_bytes().startswith(b"\x89PNG")


def test_bench_rejects_quick_and_full_together():
    proc = subprocess.run(
        [sys.executable, "-m", "chatcore", "bench", "--quick", "--full"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2


def test_a_legacy_row_is_decided_by_the_modules_file(tmp_path):
    stdlib_dir = sysconfig.get_paths()["stdlib"]
    assert framing._module_origin("asynchat", os.path.join(stdlib_dir, "asynchat.py")) == "stdlib"
    stray = tmp_path / "asynchat.py"
    stray.write_text("")
    assert framing._module_origin("asynchat", str(stray)) is None
    compat_dir = os.path.join(os.path.dirname(chatcore.__file__), "compat")
    for name in ("asynchat", "asyncore"):
        assert framing._module_origin(name, os.path.join(compat_dir, name + ".py")) is None


def test_the_legacy_row_looks_past_chatcore_compat_under_the_legacy_names():
    # In a child: install() changes sys.modules for good.
    code = (
        "import sys, chatcore.compat; chatcore.compat.install()\n"
        "from chatcore.benchmark import framing\n"
        "print(sorted(framing.implementations()))\n"
        "print(sys.modules['asynchat'].__name__, sys.modules['asyncore'].__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    names, modules = proc.stdout.splitlines()
    assert "chatcore-python" in names
    origin = framing.legacy_origin()
    for row in framing.LEGACY_ROWS.values():
        assert (row in names) == (origin is not None and row == framing.LEGACY_ROWS[origin])
    assert modules == "chatcore.compat.asynchat chatcore.compat.asyncore"  # left as found


@pytest.mark.skipif(framing.legacy_origin() is None, reason="no legacy asynchat/asyncore here")
def test_import_legacy_gives_the_real_modules_and_leaves_sys_modules_alone():
    names = ("asynchat", "asyncore")
    before = {name: sys.modules.get(name) for name in names}
    origin, asynchat, asyncore = framing.import_legacy()
    assert {name: sys.modules.get(name) for name in names} == before
    assert origin == framing.legacy_origin()
    for name, module in zip(names, (asynchat, asyncore)):
        assert framing._module_origin(name, module.__file__) == origin
        assert "chatcore" not in os.path.realpath(module.__file__).split(os.sep)
    assert asynchat.asyncore is asyncore


@pytest.mark.parametrize("workload", sorted(framing.WORKLOADS))
def test_a_wrong_framing_result_fails_the_run(workload):
    def lying_runner(reads, read_size, protocol):
        protocol.messages = protocol.expected_messages + 1
        return 0.001

    with pytest.raises(AssertionError):
        framing.run_once(workload, "liar", 65536, 0.001, lying_runner)
