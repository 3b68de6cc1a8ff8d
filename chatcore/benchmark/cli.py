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
counts as one), each answered before the next is sent.
"""

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import chatcore

from . import echo, framing, smtp

MODES = {
    # mode: framing scale, framing workloads, read sizes, passes, echo settings
    "quick": {
        "scale": 0.1,
        "workloads": ["lines16", "smtp64k"],
        "read_sizes": [65536],
        "passes": 3,
        "echo_modes": [("pipelined", 2, 20_000), ("ping-pong", 1, 1_000)],
        "smtp": (2, 50),
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
    },
}

SUITES = ("framing", "echo", "smtp")
#: Baseline rows, best first: the legacy modules this Python has, else asyncio.
FRAMING_BASELINES = ("stdlib-asynchat", "pyasynchat", "asyncio-streams")
ECHO_BASELINES = ("stdlib", "pyasynchat", "asyncio")
#: What the ratio column's header calls each pair of baselines.
BASELINE_NAMES = {
    ("stdlib-asynchat", "stdlib"): "stdlib asynchat/asyncore",
    ("pyasynchat", "pyasynchat"): "pyasynchat/pyasyncore",
    ("asyncio-streams", "asyncio"): "asyncio",
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


def _echo_rows(settings: dict[str, Any], progress: Callable[[str], None]) -> list[Row]:
    rows = []
    for mode, connections, lines, *extra in settings["echo_modes"]:
        idle = extra[0] if extra else 0
        benchmark = "echo %s, %d connection%s" % (mode, connections, "s" if connections > 1 else "")
        if idle:
            benchmark += " + %d idle" % idle
        for server in echo.available_servers():
            if idle and server in echo.SELECT_BOUND_SERVERS:
                progress("  %-36s %-16s skipped: select() cannot hold %d connections" % (benchmark, server, idle))
                continue
            result = echo.run_echo(server, mode, connections, lines, idle_connections=idle)
            row = Row(
                "echo",
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
                latency = "  p50 %.0f us, p99 %.0f us" % (result.p50_us, result.p99_us)
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


def baselines(rows: list[Row]) -> dict[Row, Optional[Row]]:
    """Each row's baseline: the best row of ``*_BASELINES`` its benchmark has."""
    by_benchmark: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_benchmark.setdefault(row.benchmark, {})[row.implementation] = row
    result: dict[Row, Optional[Row]] = {}
    for row in rows:
        peers = by_benchmark[row.benchmark]
        names = FRAMING_BASELINES if row.suite == "framing" else ECHO_BASELINES
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
    """The baseline the ratio column is named after: the best one present in *rows*."""
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
        latency = "" if row.p50_us is None else "%.0f / %.0f" % (row.p50_us, row.p99_us)
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
                baseline_implementation=None if against[row] is None else against[row].implementation,
                time_over_floor=over_floor.get(row),
            )
            for row in rows
        ],
    }


def plot(rows: list[Row], path: str, machine: dict[str, Any]) -> bool:
    """Draw the ratios to *path* (PNG or SVG by extension); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    speedups = ratios(rows)
    benchmarks = list(dict.fromkeys(row.benchmark for row in rows))
    implementations = list(dict.fromkeys(row.implementation for row in rows))
    height = 0.8 / max(1, len(implementations))
    figure, axes = plt.subplots(figsize=(10, 0.6 * len(benchmarks) * max(2, len(implementations)) / 2 + 1.5))
    for index, name in enumerate(implementations):
        values = []
        for benchmark in benchmarks:
            match = [row for row in rows if row.benchmark == benchmark and row.implementation == name]
            values.append((speedups.get(match[0]) or 0.0) if match else 0.0)
        axes.barh([position + index * height for position in range(len(benchmarks))], values, height=height, label=name)
    axes.set_yticks([position + height * (len(implementations) - 1) / 2 for position in range(len(benchmarks))])
    axes.set_yticklabels(benchmarks)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speed relative to %s (higher is faster)" % baseline_name(rows))
    axes.set_title(
        "chatcore %s, %s, %s, %s cores" % (machine["chatcore"], machine["python"], machine["cpu"], machine["cores"]),
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


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
        "--suite", choices=list(SUITES), action="append", help="run only this suite (repeatable; default: all)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also draw a chart (PNG or SVG; needs matplotlib)")


def main(args: argparse.Namespace) -> int:
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
    rows = run(args.mode, args.suite or list(SUITES))
    print()
    print(format_table(rows))
    notes = floor_notes(rows)
    if notes:
        print("\nchatcore-cython's time per message over the handler floor's (the handler alone, no framing):")
        for note in notes:
            print("  " + note)
    for suite in ("echo", "smtp"):
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
        if plot(rows, args.plot, machine):
            print("chart written to %s" % args.plot)
        else:
            print("no chart: matplotlib is not installed (pip install 'chatcore[plot]')")
    return 0
