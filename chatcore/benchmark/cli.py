"""``python -m chatcore bench``: run the benchmarks, print a table, save JSON or a chart.

Every figure in the table is measured in the same run as its baseline: the
ratio column is the speed of a row divided by the speed of the legacy
asynchat/asyncore row of the same benchmark: the standard library's up to
Python 3.11, PyPI's pyasynchat/pyasyncore on 3.12+ when installed (the
alternative a 3.12+ user has), else asyncio's.  A ratio against another row
than the column's (a benchmark the legacy modules cannot run) names it.
A framing figure is the best of a few timed passes (the least disturbed one
on a shared machine); the framing row "handler-floor" is the benchmark
handler's own callbacks on the messages split beforehand, no framing (the
same work at every read size, so measured once per workload, with the passes
of all read sizes), and the notes say chatcore-cython's time over it.  An echo or SMTP figure is one
bounded run against a server in its own process (for SMTP, the fastest of
a few runs, the servers taking turns).  The servers "chatcore" and
"chatcore-compat" are the two send timings: pushes coalesced until the end of
a loop turn (chatcore.async_chat) and each push handed to the socket at once
(chatcore.compat, stdlib's timing); the notes under the table say what each
server measured.  The SMTP suite runs one legacy server module, unchanged, on
each row's asynchat/asyncore; its messages are commands (a message body
counts as one), each answered before the next is sent.  The TLS suite is the
echo benchmark over TLS 1.3 (chatcore's start_tls, asyncio's and uvloop's
TLS transports; it needs trustme, which makes the certificates): asynchat
never had TLS, so its ratios are to asyncio.  The aio suite serves one
chatcore echo server on chatcore.loop(), and through chatcore.aio on asyncio
and on uvloop: its ratios are to chatcore.loop().  The prefork suite (only
with ``--suite prefork``) is echo served by ``chatcore.prefork()`` with 1 and
2 workers and by a plain loop; its ratios are to 1 worker, and the notes give
the server's CPU time per line, since the load client shares the cores.
The files suite serves one
file (1 GiB with --full) over one connection: push_file (sendfile), a
read-and-push producer, asyncio's loop.sendfile (its ratios are to it) and
uvloop; its notes give each server's CPU time per GiB.
"""

import argparse
import json
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

import chatcore

from . import aio, echo, files, framing, prefork, smtp, tls

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODES: dict[str, dict[str, Any]] = {
    # mode: framing scale, framing workloads, read sizes, passes, echo settings
    "quick": {
        "scale": 0.1,
        "workloads": ["lines16", "smtp64k"],
        "read_sizes": [65536],
        "passes": 3,
        "echo_modes": [("pipelined", 2, 20_000), ("ping-pong", 1, 1_000)],
        "smtp": (2, 50),
        "tls_modes": [("pipelined", 2, 5_000), ("ping-pong", 1, 500)],
        "aio_modes": [("pipelined", 2, 20_000), ("ping-pong", 1, 1_000)],
        # bytes of the served file, transfers per server (the best one counts)
        "files": (32 << 20, 1),
    },
    # About a minute on a 2-core machine, with one row per echo server kind.
    # Scale 0.5 at the least: the big body (32 MiB then) must not fit in the
    # CPU's cache, or its row measures cache bandwidth, not the framing.
    "default": {
        "scale": 0.5,
        "workloads": sorted(framing.WORKLOADS),
        "read_sizes": list(framing.READ_SIZES),
        "passes": 3,
        "echo_modes": [("pipelined", 4, 100_000), ("ping-pong", 1, 5_000), ("ping-pong", 1, 5_000, 2_000)],
        # connections, transactions per connection (5 commands each)
        "smtp": (4, 400),
        # Smaller than the echo suite's: asyncio's and uvloop's TLS rows are
        # several times slower than chatcore's, and take most of the time.
        "tls_modes": [("pipelined", 4, 25_000), ("ping-pong", 1, 2_000)],
        "aio_modes": [("pipelined", 4, 50_000), ("ping-pong", 1, 3_000)],
        "files": (256 << 20, 2),
    },
    "full": {
        "scale": 1.0,
        "workloads": sorted(framing.WORKLOADS),
        "read_sizes": list(framing.READ_SIZES),
        "passes": 5,
        "echo_modes": [
            ("pipelined", 4, 500_000),
            ("pipelined", 32, 50_000),
            ("ping-pong", 1, 20_000),
            ("ping-pong", 1, 20_000, 10_000),
        ],
        "smtp": (4, 3_000),
        "tls_modes": [("pipelined", 4, 100_000), ("ping-pong", 1, 20_000)],
        "aio_modes": [("pipelined", 4, 500_000), ("ping-pong", 1, 20_000)],
        "files": (1 << 30, 3),
    },
}

SUITES = ("framing", "echo", "smtp", "tls", "files", "aio", "prefork")
#: Suites run only when named with --suite (they fork servers and take longer).
OPT_IN_SUITES = ("prefork",)
DEFAULT_SUITES = [suite for suite in SUITES if suite not in OPT_IN_SUITES]
#: The loopback echo suites: settings key of their modes, what their
#: benchmarks are called, their kind of server process.
ECHO_SUITES: dict[str, tuple[str, str, type[echo.EchoServerProcess]]] = {
    "echo": ("echo_modes", "echo", echo.EchoServerProcess),
    "tls": ("tls_modes", "TLS 1.3 echo", tls.TLSEchoServerProcess),
    "aio": ("aio_modes", "echo via chatcore.aio", aio.AioEchoServerProcess),
}
#: Baseline rows, best first: the legacy modules this Python has, else asyncio.
FRAMING_BASELINES = ("stdlib-asynchat", "pyasynchat", "asyncio-streams")
ECHO_BASELINES = ("stdlib", "pyasynchat", "asyncio")
#: Suites whose rows have another baseline than ECHO_BASELINES, and what it is called.
SUITE_BASELINES = {"files": ("asyncio",), "aio": ("chatcore",), "prefork": (prefork.BASELINE,)}
SUITE_BASELINE_NAMES = {"files": "asyncio loop.sendfile", "aio": "chatcore.loop()", "prefork": "1 prefork worker"}
#: What the ratio column's header calls each pair of baselines.
BASELINE_NAMES = {
    ("stdlib-asynchat", "stdlib"): "stdlib asynchat/asyncore",
    ("pyasynchat", "pyasynchat"): "pyasynchat/pyasyncore",
    ("asyncio-streams", "asyncio"): "asyncio",
    (prefork.BASELINE, prefork.BASELINE): "1 prefork worker",
}


class Row(NamedTuple):
    suite: str
    benchmark: str
    implementation: str
    messages: int
    seconds: float
    data_bytes: int  # bytes of the stream (framing) or echoed (echo)
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None
    #: What served an echo or SMTP row (the server's own report), None for framing.
    detail: Optional[str] = None

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.data_bytes / self.seconds / 1e6 if self.seconds else float("inf")


def machine_description() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": platform.platform(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "chatcore": chatcore.__version__,
        "engine": chatcore.implementation,
    }


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _framing_rows(settings: dict[str, Any], progress: Callable[[str], None]) -> list[Row]:
    rows = []
    runners = framing.implementations()
    for workload in settings["workloads"]:
        floor: Optional[framing.Measurement] = None
        for read_size in settings["read_sizes"]:
            benchmark = "%s @ %d KiB reads" % (workload, read_size // 1024)
            framing.prepared_reads(workload, settings["scale"], read_size)
            for name, runner in runners.items():
                if not framing.runs_on(name, workload):
                    continue
                if name == framing.FLOOR and floor is not None:
                    best = floor  # the same work whatever the read size: measured once
                else:
                    # The floor gets the passes of every read size at once.
                    count = settings["passes"] * (len(settings["read_sizes"]) if name == framing.FLOOR else 1)
                    best = min(
                        (framing.run_once(workload, name, read_size, settings["scale"], runner) for _ in range(count)),
                        key=lambda measurement: measurement.seconds,
                    )
                    if name == framing.FLOOR:
                        floor = best
                row = Row("framing", benchmark, name, best.messages, best.seconds, best.stream_bytes)
                rows.append(row)
                progress("  framing %-28s %-16s %12s msg/s" % (benchmark, name, _si(row.messages_per_s)))
    return rows


def _echo_rows(settings: dict[str, Any], progress: Callable[[str], None], suite: str = "echo") -> list[Row]:
    """The rows of a loopback echo suite (ECHO_SUITES): every mode of *settings*, every server here."""
    modes_key, title, process_class = ECHO_SUITES[suite]
    rows = []
    for mode, connections, lines, *extra in settings[modes_key]:
        idle = extra[0] if extra else 0
        benchmark = "%s %s, %d connection%s" % (title, mode, connections, "s" if connections > 1 else "")
        if idle:
            benchmark += " + %d idle" % idle
        for server in process_class.available_servers():
            if idle and server in echo.SELECT_BOUND_SERVERS:
                progress("  %-36s %-16s skipped: select() cannot hold %d connections" % (benchmark, server, idle))
                continue
            result = echo.run_echo(server, mode, connections, lines, idle_connections=idle, process_class=process_class)
            row = Row(
                suite,
                benchmark,
                server,
                result.messages,
                result.seconds,
                result.bytes,
                result.p50_us,
                result.p99_us,
                result.server_detail,
            )
            rows.append(row)
            latency = ""
            if result.p50_us is not None:
                latency = "  p50 %.0f us, p99 %.0f us" % (result.p50_us, result.p99_us)  # type: ignore[str-format]
            if result.rss_per_idle_connection is not None:
                latency += ", server RSS %.0f B per idle connection" % result.rss_per_idle_connection
            if result.send_timing is not None:
                latency += "  (pushes sent %s)" % result.send_timing
            progress("  %-36s %-16s %12s msg/s%s" % (benchmark, server, _si(row.messages_per_s), latency))
    return rows


def _smtp_rows(settings: dict[str, Any], progress: Callable[[str], None]) -> list[Row]:
    rows = []
    connections, transactions = settings["smtp"]
    benchmark = "smtp, %d connections, %d B messages" % (connections, smtp.BODY_SIZE)
    results = smtp.run_smtp_servers(smtp.available_servers(), connections, transactions, settings["passes"])
    for server, result in results.items():
        rows.append(
            Row(
                "smtp",
                benchmark,
                server,
                result.commands,
                result.seconds,
                result.bytes,
                result.p50_us,
                result.p99_us,
                result.server_detail,
            )
        )
        progress(
            "  %-36s %-16s %12s commands/s, %s transactions/s  p50 %.0f us, p99 %.0f us  (pushes sent %s)"
            % (
                benchmark,
                server,
                _si(result.commands_per_s),
                _si(result.transactions_per_s),
                result.p50_us,
                result.p99_us,
                result.send_timing,
            )
        )
    return rows


def _files_rows(settings: dict[str, Any], progress: Callable[[str], None]) -> list[Row]:
    size, transfers = settings["files"]
    benchmark = "serve a %d MiB file, 1 connection" % (size >> 20)
    rows = []
    for result in files.run_files(files.available_servers(), size, transfers, progress):
        detail = "%s; server CPU %.2f s per GiB sent" % (result.detail, result.cpu_seconds * (1 << 30) / size)
        rows.append(Row("files", benchmark, result.server, 1, result.seconds, size, detail=detail))
    return rows


def floor_ratios(rows: list[Row]) -> dict[Row, float]:
    """Each framing row's time per message over the handler floor's, where its benchmark has one."""
    floors = {row.benchmark: row for row in rows if row.suite == "framing" and row.implementation == framing.FLOOR}
    result: dict[Row, float] = {}
    for row in rows:
        floor = floors.get(row.benchmark)
        if row.suite == "framing" and floor is not None and row.messages and floor.messages:
            result[row] = (row.seconds / row.messages) / (floor.seconds / floor.messages)
    return result


def floor_notes(rows: list[Row], implementation: str = "chatcore-cython") -> list[str]:
    """One line per framing benchmark: *implementation*'s time per message over the floor's."""
    return [
        "%s: %.2fx" % (row.benchmark, ratio)
        for row, ratio in floor_ratios(rows).items()
        if row.implementation == implementation
    ]


def terminator_notes(rows: list[Row]) -> list[str]:
    """One line per row of a tuple-terminator workload: its time per message over the one-terminator twin's.

    The twin (``Workload.single_terminator_twin``) frames the same stream,
    and its row of the same implementation and read size is in the same run.
    """
    by_key = {(row.benchmark, row.implementation): row for row in rows if row.suite == "framing"}
    notes = []
    for row in rows:
        workload, _, reads = row.benchmark.partition(" @ ")
        details = framing.WORKLOADS.get(workload) if row.suite == "framing" else None
        if details is None or details.single_terminator_twin is None:
            continue
        twin = by_key.get(("%s @ %s" % (details.single_terminator_twin, reads), row.implementation))
        if twin is not None and row.messages and twin.messages:
            ratio = (row.seconds / row.messages) / (twin.seconds / twin.messages)
            notes.append("%s, %s: %.2fx %s's" % (row.benchmark, row.implementation, ratio, twin.benchmark))
    return notes


def baselines(rows: list[Row]) -> dict[Row, Optional[Row]]:
    """Each row's baseline: the best row of ``*_BASELINES`` its benchmark has."""
    by_benchmark: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_benchmark.setdefault(row.benchmark, {})[row.implementation] = row
    result: dict[Row, Optional[Row]] = {}
    for row in rows:
        peers = by_benchmark[row.benchmark]
        names = FRAMING_BASELINES if row.suite == "framing" else SUITE_BASELINES.get(row.suite, ECHO_BASELINES)
        result[row] = next((peers[name] for name in names if name in peers), None)
    return result


def ratios(rows: list[Row]) -> dict[Row, Optional[float]]:
    """Each row's speed over its benchmark's baseline row, measured in the same run."""
    result: dict[Row, Optional[float]] = {}
    for row, baseline in baselines(rows).items():
        result[row] = (
            (baseline.seconds / baseline.messages) / (row.seconds / row.messages)
            if (baseline is not None and row.messages and baseline.messages)
            else None
        )
    return result


def _baseline_pair(rows: list[Row]) -> tuple[str, str]:
    names = {row.implementation for row in rows}
    return next((pair for pair in BASELINE_NAMES if names & set(pair)), ("asyncio-streams", "asyncio"))


def baseline_name(rows: list[Row]) -> str:
    """The baseline the ratio column is named after: the best one present in *rows*.

    When every row is of one suite with a baseline of its own, that one.
    """
    suites = {row.suite for row in rows}
    if len(suites) == 1 and suites <= set(SUITE_BASELINE_NAMES):
        return SUITE_BASELINE_NAMES[suites.pop()]
    return BASELINE_NAMES[_baseline_pair(rows)]


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return "%.2f%s" % (value / factor, suffix)
    return "%.1f" % value


def format_table(rows: list[Row]) -> str:
    """A plain-text table; also valid Markdown, so it can go into the README as is."""
    speedups = ratios(rows)
    against = baselines(rows)
    main_baselines = _baseline_pair(rows)
    header = ["benchmark", "implementation", "messages/s", "MB/s", "vs " + baseline_name(rows), "p50 / p99 us"]
    lines = [header]
    for row in rows:
        ratio = speedups[row]
        latency = "" if row.p50_us is None else "%.0f / %.0f" % (row.p50_us, row.p99_us)  # type: ignore[str-format]
        cell = "-" if ratio is None else "%.2fx" % ratio
        baseline = against[row]
        if ratio is not None and baseline is not None and baseline.implementation not in main_baselines:
            cell += " vs " + baseline.implementation
        lines.append(
            [
                row.benchmark,
                row.implementation,
                _si(row.messages_per_s),
                "%.1f" % row.mb_per_s,
                cell,
                latency,
            ]
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    rendered = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines]
    rendered.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(rendered)


def server_notes(rows: list[Row], suite: str = "echo") -> list[str]:
    """One line per server of *suite*: what it reported serving (send timing included)."""
    details: dict[str, list[str]] = {}
    for row in rows:
        if row.suite == suite and row.detail:
            seen = details.setdefault(row.implementation, [])
            if row.detail not in seen:
                seen.append(row.detail)
    return ["%s: %s" % (name, "; ".join(texts)) for name, texts in details.items()]


def to_json(rows: list[Row], mode: str, machine: dict[str, Any]) -> dict[str, Any]:
    speedups = ratios(rows)
    against = baselines(rows)
    over_floor = floor_ratios(rows)
    return {
        "mode": mode,
        "machine": machine,
        "baseline": baseline_name(rows),
        "results": [
            dict(
                row._asdict(),
                messages_per_s=row.messages_per_s,
                mb_per_s=row.mb_per_s,
                ratio_to_baseline=speedups[row],
                baseline_implementation=None if against[row] is None else against[row].implementation,  # type: ignore[union-attr]
                time_over_floor=over_floor.get(row),
            )
            for row in rows
        ],
    }


#: A fixed colour per implementation, also the order of the bars in a chart's
#: group: chatcore's rows saturated, the legacy baseline grey, the others
#: muted.  The legacy and asyncio rows have a name per suite, one colour.
CHART_COLOURS = {
    "chatcore-cython": "#08519c",
    "chatcore-messages": "#6a3d9a",
    "chatcore-python": "#6baed6",
    "chatcore": "#00695c",
    "chatcore-compat": "#4db6ac",
    "stdlib-asynchat": "#9e9e9e",
    "stdlib": "#9e9e9e",
    "pyasynchat": "#9e9e9e",
    "asyncio-streams": "#e6b07a",
    "asyncio": "#e6b07a",
    "uvloop": "#a5cc98",
    framing.FLOOR: "white",  # hatched: the handler's own cost, not an implementation
}
#: For implementations CHART_COLOURS does not know, in the order they appear.
_SPARE_COLOURS = ("#d9a6c9", "#c9c27a", "#8dd3c7", "#bc80bd", "#fdb462")
#: What each chart panel measured, under the suite's name.
_SUITE_TITLES = {
    "framing": "framing: handle_read() on prepared reads, no sockets",
    "echo": "echo: over 127.0.0.1, each server in its own process",
    "smtp": "smtp: commands over 127.0.0.1, legacy_smtpd.py unchanged",
    "tls": "tls: echo over TLS 1.3 on 127.0.0.1, each server in its own process",
    "files": "files: one file served over 127.0.0.1, each server in its own process",
    "aio": "aio: one chatcore echo server on chatcore.loop() and through chatcore.aio, own processes",
    "prefork": "prefork: echo over 127.0.0.1 from 1 and 2 forked workers (the load client shares the cores)",
}
_BAR_PITCH = 0.13  # inches per bar: a chart's height follows its row count
_GROUP_GAP = 0.7  # between two benchmarks' bars, in bars


def chart_colours(rows: list[Row]) -> dict[str, str]:
    """Each implementation of *rows* with its chart colour, in the order a group's bars take."""
    names = list(dict.fromkeys(row.implementation for row in rows))
    colours = {name: colour for name, colour in CHART_COLOURS.items() if name in names}
    unknown = [name for name in names if name not in CHART_COLOURS]
    colours.update((name, _SPARE_COLOURS[index % len(_SPARE_COLOURS)]) for index, name in enumerate(unknown))
    return colours


def chart(rows: list[Row], machine: dict[str, Any]) -> "Figure":
    """The figure ``plot`` saves: a panel per suite, in it a group of bars per benchmark.

    A bar is a row's ratio to its benchmark's baseline (the line at 1); a
    group holds only the implementations its benchmark ran, and one measured
    against another baseline than the title's says so.  Needs matplotlib.
    """
    from matplotlib.figure import Figure

    measured = {row: ratio for row, ratio in ratios(rows).items() if ratio is not None}
    against = baselines(rows)
    main_baselines = _baseline_pair(rows)
    colours = chart_colours(rows)
    order = list(colours)
    panels = []  # (suite, [(benchmark, its rows in bar order), ...])
    for suite in dict.fromkeys(row.suite for row in rows):
        groups = []
        for benchmark in dict.fromkeys(row.benchmark for row in measured if row.suite == suite):
            members = [row for row in measured if row.benchmark == benchmark]
            groups.append((benchmark, sorted(members, key=lambda row: order.index(row.implementation))))
        if groups:
            panels.append((suite, groups))
    # In bars: each panel's bars, the gaps between its groups, half a bar above and below.
    spans = [sum(len(members) + _GROUP_GAP for _, members in groups) - _GROUP_GAP + 0.5 for _, groups in panels]
    figure = Figure(figsize=(10, _BAR_PITCH * sum(spans) + 0.75 * len(panels) + 0.8), constrained_layout=True)
    figure.suptitle(
        "chatcore %s (%s engine) on %s, %s, %s cores\nspeed relative to %s, in the same run (higher is faster)"
        % (
            machine["chatcore"],
            machine["engine"],
            machine["python"],
            machine["cpu"],
            machine["cores"],
            baseline_name(rows),
        ),
        fontsize=10,
    )
    grid = figure.subplots(max(1, len(panels)), 1, squeeze=False, gridspec_kw={"height_ratios": spans or [1]})
    for axes, (suite, groups) in zip(grid[:, 0], panels):
        bars: dict[str, list[tuple[float, float]]] = {}  # implementation: (position, ratio) of each bar
        ticks, tick_labels = [], []
        top = 0.0
        for index, (benchmark, members) in enumerate(groups):
            if index:
                axes.axhline(top - (_GROUP_GAP + 1) / 2, color="#dddddd", linewidth=0.8)
            for offset, row in enumerate(members):
                bars.setdefault(row.implementation, []).append((top + offset, measured[row]))
            ticks.append(top + (len(members) - 1) / 2)
            baseline = against[members[0]]
            if baseline is not None and baseline.implementation not in main_baselines:
                benchmark += "\n(vs %s)" % baseline.implementation
            tick_labels.append(benchmark)
            top += len(members) + _GROUP_GAP
        widest = max(ratio for placed in bars.values() for _, ratio in placed)
        for name in bars:
            positions, values = zip(*bars[name])
            is_floor = name == framing.FLOOR
            axes.barh(
                positions,
                values,
                height=0.8,
                color=colours[name],
                edgecolor="#555555" if is_floor else colours[name],
                hatch="////" if is_floor else None,
                linewidth=0.6,
                label=name,
                zorder=2,
            )
            for position, value in zip(positions, values):
                axes.text(
                    value + widest * 0.01,
                    position,
                    "%.2fx" % value,
                    va="center",
                    fontsize=7,
                    zorder=4,  # over the line at 1, on a white patch that keeps it legible
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4, "alpha": 0.85},
                )
        axes.axvline(1.0, color="black", linewidth=1.0, zorder=3)
        axes.set_xlim(0, max(widest * 1.12, 1.2))
        axes.set_ylim(top - _GROUP_GAP - 0.25, -0.75)  # first group on top
        axes.set_yticks(ticks)
        axes.set_yticklabels(tick_labels, fontsize=8.5)
        axes.tick_params(axis="y", length=0)
        axes.tick_params(axis="x", labelsize=8)
        axes.xaxis.set_major_formatter("{x:g}x")
        axes.grid(axis="x", color="#eeeeee", zorder=0)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        axes.set_title(_SUITE_TITLES.get(suite, suite), fontsize=9.5, loc="left")
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return figure


def plot(rows: list[Row], path: str, machine: dict[str, Any]) -> bool:
    """Save ``chart(rows, machine)`` to *path* (PNG or SVG by extension); False without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (optional: the "plot" extra)
    except ImportError:
        return False
    chart(rows, machine).savefig(path, dpi=100)
    return True


def rows_from_json(data: dict[str, Any]) -> list[Row]:
    """The rows a ``to_json`` document (a ``--json`` file) was made from."""
    return [Row(**{field: result[field] for field in Row._fields}) for result in data["results"]]


def run(mode: str, suites: list[str], progress: Callable[[str], None] = _progress) -> list[Row]:
    settings = MODES[mode]
    rows: list[Row] = []
    if "framing" in suites:
        progress("framing (scale %.2f, best of %d passes):" % (settings["scale"], settings["passes"]))
        rows += _framing_rows(settings, progress)
    if "echo" in suites:
        progress("loopback echo (servers: %s):" % ", ".join(echo.available_servers()))
        rows += _echo_rows(settings, progress)
    if "smtp" in suites:
        progress(
            "SMTP request/response, legacy_smtpd.py unchanged (servers: %s):" % ", ".join(smtp.available_servers())
        )
        rows += _smtp_rows(settings, progress)
    if "tls" in suites:
        reason = tls.unavailable_reason()
        if reason is None:
            progress("loopback TLS echo, ratios to asyncio (servers: %s):" % ", ".join(tls.available_servers()))
            rows += _echo_rows(settings, progress, "tls")
        else:
            progress("loopback TLS echo skipped: %s" % reason)
    if "files" in suites:
        progress(
            "loopback file serving, ratios to asyncio's loop.sendfile (servers: %s):"
            % ", ".join(files.available_servers())
        )
        rows += _files_rows(settings, progress)
    if "aio" in suites:
        progress(
            "loopback echo through chatcore.aio, ratios to chatcore.loop() (servers: %s):"
            % ", ".join(aio.available_servers())
        )
        rows += _echo_rows(settings, progress, "aio")
    if "prefork" in suites:
        progress("loopback echo from chatcore.prefork() workers, ratios to 1 worker:")
        rows += _prefork_rows(mode, progress)
    return rows


def _prefork_rows(mode: str, progress: Callable[[str], None]) -> list[Row]:
    rows = []
    for benchmark, result in prefork.run_suite(mode, progress):
        detail = "%s: server CPU %.2f us per line, connections per process %s" % (
            result.mode,
            result.server_cpu_us_per_line,
            "+".join(map(str, result.connections_per_worker)),
        )
        rows.append(
            Row(
                "prefork",
                benchmark,
                result.server,
                result.messages,
                result.seconds,
                result.bytes,
                result.p50_us,
                result.p99_us,
                detail,
            )
        )
    return rows


def add_parser(commands: Any) -> None:
    """Register ``bench`` on the ``python -m chatcore`` subcommand parser."""
    parser = commands.add_parser(
        "bench",
        help="benchmark chatcore against legacy asynchat (stdlib or pyasynchat) and asyncio",
        description=__doc__.split("\n\n", 1)[1],
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="a small subset, under 15 seconds"
    )
    size.add_argument(
        "--full", dest="mode", action="store_const", const="full", help="every workload at full size (several minutes)"
    )
    parser.set_defaults(mode="default", run=main)
    parser.add_argument(
        "--suite",
        choices=list(SUITES),
        action="append",
        help="run only this suite (repeatable; default: all but %s)" % ", ".join(OPT_IN_SUITES),
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also draw a chart (PNG or SVG; needs matplotlib)")
    parser.add_argument(
        "--plot-from",
        metavar="JSON",
        help="run nothing: draw the --plot chart from the --json file of an earlier run",
    )


def _write_plot(rows: list[Row], path: str, machine: dict[str, Any]) -> bool:
    if plot(rows, path, machine):
        print("chart written to %s" % path)
        return True
    print("no chart: matplotlib is not installed (pip install 'chatcore[plot]')")
    return False


def main(args: argparse.Namespace) -> int:
    if args.plot_from:
        if not args.plot:
            print("--plot-from needs --plot PATH, the chart to draw", file=sys.stderr)
            return 2
        with open(args.plot_from) as handle:
            data = json.load(handle)
        return 0 if _write_plot(rows_from_json(data), args.plot, data["machine"]) else 1
    machine = machine_description()
    print(
        "chatcore bench (%s): %s, %s cores, %s, %s; chatcore %s on its %s engine"
        % (
            args.mode,
            machine["cpu"],
            machine["cores"],
            machine["system"],
            machine["python"],
            machine["chatcore"],
            machine["engine"],
        )
    )
    started = time.perf_counter()
    rows = run(args.mode, args.suite or DEFAULT_SUITES)
    print()
    print(format_table(rows))
    notes = floor_notes(rows)
    if notes:
        print("\nchatcore-cython's time per message over the handler floor's (the handler alone, no framing):")
        for note in notes:
            print("  " + note)
    notes = terminator_notes(rows)
    if notes:
        print("\nseveral terminators, time per message over one terminator's (the same stream and reads):")
        for note in notes:
            print("  " + note)
    for suite in ("echo", "smtp", "tls", "files", "aio", "prefork"):
        notes = server_notes(rows, suite)
        if notes:
            print("\n%s servers:" % suite)
            for note in notes:
                print("  " + note)
    print(
        "\n%d measurements in %.1f s; ratios are speed over %s, measured in this run."
        % (len(rows), time.perf_counter() - started, baseline_name(rows))
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(to_json(rows, args.mode, machine), handle, indent=2)
        print("results written to %s" % args.json)
    if args.plot:
        _write_plot(rows, args.plot, machine)
    return 0
