"""``python -m chatcore bench``: the table, the ratios, --json and --plot.

Behaviour only: the figures themselves are never asserted (this machine's
timings wander); their consistency is.
"""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig

import pytest

import chatcore
from chatcore.__main__ import main as chatcore_main
from chatcore.benchmark import cli, echo, framing, smtp, tls

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
MACHINE = {
    "cpu": "a CPU",
    "cores": 2,
    "system": "a system",
    "python": "CPython 3.x",
    "chatcore": "0",
    "engine": "python",
}


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


def test_the_aio_suite_is_measured_against_chatcore_loop():
    aio_rows = [
        _row("x", "chatcore", 1.0, suite="aio"),
        _row("x", "aio-asyncio", 2.0, suite="aio"),
        _row("x", "aio-uvloop", 4.0, suite="aio"),
    ]
    rows = aio_rows + [_row("e", "chatcore", 1.0, suite="echo"), _row("e", "stdlib", 3.0, suite="echo")]
    speedups = cli.ratios(rows)
    assert [speedups[row] for row in rows] == [1.0, 0.5, 0.25, 3.0, 1.0]
    assert cli.baseline_name(rows) == "stdlib asynchat/asyncore"
    assert cli.baseline_name(aio_rows) == "chatcore.loop()"
    assert "0.50x vs chatcore" in cli.format_table(rows)


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


def _chart_rows():
    """Framing benchmark "a" with every row, "b" with two; echo "idle" measured against asyncio."""
    return [
        _row("a", "chatcore-cython", 1.0),
        _row("a", "chatcore-python", 2.0),
        _row("a", framing.FLOOR, 0.5),
        _row("a", "stdlib-asynchat", 3.0),
        _row("a", "asyncio-streams", 6.0),
        _row("b", "chatcore-cython", 1.0),
        _row("b", "stdlib-asynchat", 2.0),
        _row("e", "chatcore", 1.0, suite="echo"),
        _row("e", "stdlib", 2.0, suite="echo"),
        _row("idle", "chatcore", 1.0, suite="echo"),
        _row("idle", "asyncio", 4.0, suite="echo"),
        _row("s", "chatcore-compat", 2.0, suite="smtp"),
        _row("s", "stdlib", 2.0, suite="smtp"),
    ]


def _bars(axes):
    """One chart panel's bars: {implementation: [(centre on the y axis, ratio), ...]}."""
    return {
        bars.get_label(): [(bar.get_y() + bar.get_height() / 2, bar.get_width()) for bar in bars]
        for bars in axes.containers
    }


@needs_matplotlib
def test_the_chart_has_a_panel_per_suite_and_in_each_group_only_the_rows_it_has():
    figure = cli.chart(_chart_rows(), MACHINE)
    assert [axes.get_title(loc="left").split(":")[0] for axes in figure.axes] == ["framing", "echo", "smtp"]
    framing_panel, echo_panel, smtp_panel = figure.axes
    bars = _bars(framing_panel)
    # chatcore's rows first, then the baseline, the others, the floor; each group's bars side by side.
    assert list(bars) == ["chatcore-cython", "chatcore-python", "stdlib-asynchat", "asyncio-streams", framing.FLOOR]
    group_a = sorted(bar for placed in bars.values() for bar in placed if bar[0] < bars["chatcore-cython"][1][0])
    assert [centre for centre, _ in group_a] == [0, 1, 2, 3, 4]
    assert [ratio for _, ratio in group_a] == [3.0, 1.5, 1.0, 0.5, 6.0]
    (b_cython, b_ratio), (b_stdlib, _) = bars["chatcore-cython"][1], bars["stdlib-asynchat"][1]
    assert b_stdlib - b_cython == pytest.approx(1) and b_ratio == 2.0
    assert {"3.00x", "1.50x", "6.00x", "2.00x"} <= {text.get_text() for text in framing_panel.texts}
    assert [label.get_text() for label in echo_panel.get_yticklabels()] == ["e", "idle\n(vs asyncio)"]
    assert _bars(smtp_panel) == {"chatcore-compat": [(0, 1.0)], "stdlib": [(1, 1.0)]}
    for axes in figure.axes:
        assert [1, 1] in [list(line.get_xdata()) for line in axes.lines]  # the baseline's line
    assert "CPython 3.x" in figure.get_suptitle() and "stdlib asynchat/asyncore" in figure.get_suptitle()


@needs_matplotlib
def test_the_chart_gives_each_implementation_its_own_colour_and_the_legacy_baseline_grey():
    from matplotlib.colors import to_hex

    figure = cli.chart(_chart_rows(), MACHINE)
    colours = {}
    for axes in figure.axes:
        panel = {bars.get_label(): {to_hex(bar.get_facecolor()) for bar in bars} for bars in axes.containers}
        assert all(len(shades) == 1 for shades in panel.values())  # the same in every group
        assert len(set.union(*panel.values())) == len(panel)  # another than the rest of the panel's
        colours.update((name, shades.pop()) for name, shades in panel.items())
    grey = colours["stdlib"]
    assert colours["stdlib-asynchat"] == grey
    assert grey not in {colours[name] for name in colours if name.startswith("chatcore") or name == "asyncio"}


def test_chart_colours_are_fixed_and_put_implementations_it_does_not_know_last():
    rows = [_row("a", "new-thing", 1.0), _row("a", "stdlib-asynchat", 1.0), _row("a", "chatcore-cython", 1.0)]
    colours = cli.chart_colours(rows)
    assert list(colours) == ["chatcore-cython", "stdlib-asynchat", "new-thing"]
    assert colours["chatcore-cython"] == cli.chart_colours(rows[2:])["chatcore-cython"]
    assert colours["new-thing"] not in cli.CHART_COLOURS.values()


@needs_matplotlib
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_the_format_its_path_names(tmp_path, suffix):
    path = tmp_path / ("chart" + suffix)
    assert cli.plot(_chart_rows(), str(path), MACHINE) is True
    data = path.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in data[:1000] and data.rstrip().endswith(b"</svg>")


def test_plot_without_matplotlib_is_false_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes ``import matplotlib`` raise ImportError
    path = tmp_path / "chart.png"
    assert cli.plot(_chart_rows(), str(path), MACHINE) is False
    assert not path.exists()


def test_plot_from_draws_a_saved_run_without_running_one(tmp_path, capsys):
    rows = _chart_rows()
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(cli.to_json(rows, "quick", MACHINE)))
    assert cli.rows_from_json(json.loads(saved.read_text())) == rows
    chart_path = tmp_path / "chart.png"
    status = chatcore_main(["bench", "--plot-from", str(saved), "--plot", str(chart_path)])
    out = capsys.readouterr().out
    assert "chatcore bench (" not in out  # nothing was measured
    if HAS_MATPLOTLIB:
        assert status == 0 and out == "chart written to %s\n" % chart_path
        assert chart_path.read_bytes().startswith(b"\x89PNG")
    else:
        assert status == 1 and "no chart: matplotlib is not installed" in out
    assert chatcore_main(["bench", "--plot-from", str(saved)]) == 2
    assert "--plot-from needs --plot" in capsys.readouterr().err


@pytest.mark.timeout(360)  # the run's own limit is 300 s
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
    if cython:  # the floor notes are the compiled engine's, so a build without one has none
        assert "handler floor" in out and "  lines16 @ 64 KiB reads: " in out
    for row in data["results"]:
        assert row["messages"] > 0 and row["seconds"] > 0
        assert row["ratio_to_baseline"] is not None
    for name in echo.CHATCORE_SEND_MODES:
        assert "  %s: chatcore " % name in out and "ac_coalesce_sends=" in out
    if HAS_MATPLOTLIB:
        assert plot_path.read_bytes().startswith(b"\x89PNG")
    else:
        assert "no chart: matplotlib is not installed" in out
        assert not plot_path.exists()


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


# The TLS suite -------------------------------------------------------------------


def test_tls_rows_are_measured_against_asyncio_and_say_so_beside_legacy_rows():
    rows = [
        _row("e", "chatcore", 1.0, suite="echo"),
        _row("e", "stdlib", 2.0, suite="echo"),
        _row("e", "asyncio", 4.0, suite="echo"),
        _row("t", "chatcore", 1.0, suite="tls"),
        _row("t", "asyncio", 3.0, suite="tls"),
        _row("t", "uvloop", 2.0, suite="tls"),
    ]
    speedups = cli.ratios(rows)
    assert [speedups[row] for row in rows[3:]] == [3.0, 1.0, 1.5]
    table = cli.format_table(rows).splitlines()
    assert "vs stdlib asynchat/asyncore" in table[0]
    assert "3.00x vs asyncio" in table[5] and "1.50x vs asyncio" in table[7]


def test_the_tls_suite_is_skipped_with_its_reason_when_it_cannot_run(monkeypatch):
    monkeypatch.setattr(tls, "unavailable_reason", lambda: "no certificates today")
    said = []
    assert cli.run("quick", ["tls"], progress=said.append) == []
    assert said == ["loopback TLS echo skipped: no certificates today"]


@pytest.mark.skipif(tls.unavailable_reason() is not None, reason="TLS benchmark: %s" % tls.unavailable_reason())
@pytest.mark.timeout(200)
def test_quick_tls_suite_has_a_row_per_server_and_mode_each_against_asyncio(tmp_path):
    json_path = tmp_path / "tls.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chatcore", "bench", "--quick", "--suite", "tls", "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(json_path.read_text())["results"]
    assert {row["suite"] for row in results} == {"tls"}
    servers = tls.available_servers()
    assert servers[:2] == ["chatcore", "asyncio"]
    expected = [
        (benchmark, server)
        for benchmark in ("TLS 1.3 echo pipelined, 2 connections", "TLS 1.3 echo ping-pong, 1 connection")
        for server in servers
    ]
    assert [(row["benchmark"], row["implementation"]) for row in results] == expected
    for row in results:
        assert row["messages"] > 0 and row["seconds"] > 0
        assert row["baseline_implementation"] == "asyncio" and row["ratio_to_baseline"] > 0
        assert "TLS 1.3" in row["detail"]
        assert (row["p50_us"] is None) == ("pipelined" in row["benchmark"])
    assert [row["ratio_to_baseline"] for row in results if row["implementation"] == "asyncio"] == [1.0, 1.0]
    out = proc.stdout
    assert "vs asyncio" in out.splitlines()[2]  # the table's header
    assert "\ntls servers:\n  chatcore: chatcore " in out and "start_tls" in out
