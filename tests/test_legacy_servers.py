"""Real stdlib-era servers and their own test suites, on chatcore.compat and on the oracle.

CPython's test_ftplib (an asynchat FTP server whose PASV handler pushes its
reply and then blocks in accept()), test_poplib (a POP3 server whose STLS
handler pushes "+OK", del_channel()s and set_socket()s a TLS socket),
test_smtplib (servers built on smtpd) and 3.11's test_smtpd (smtpd itself,
with ``asyncore.socket = mock_socket``) run unchanged in child processes
(tests/legacy_suite.py) three ways: on the oracle (tests/oracle.py: stdlib
asyncore/asynchat on <= 3.11, pyasyncore/pyasynchat on 3.12+) and on
chatcore.compat through install() with each engine.  Every test the oracle
passes must pass on chatcore; the differing test ids are listed with their
tracebacks.  Per-test outcomes are compared, not exit codes, and a test that
hangs or crashes the child is recorded as such and the rest of the suite still
runs (in a new child).

The files come from an installed CPython at test time, never vendored.
test_ftplib/test_poplib/test_smtplib must match this interpreter's
``test.support``: they are taken from its own stdlib, else
$CHATCORE_CPYTHON_TESTS, else a sibling install of the same version (pyenv's
layout).  test_smtpd exists only up to 3.11: this stdlib, then
$CHATCORE_CPYTHON_TESTS, then a sibling 3.11; on 3.12+ it runs against
test.support's copy of smtpd.

The suites mostly wait (their servers poll every 0.1 s), so all selected
runs start together, a few children at a time, when the first test here needs
one; the oracle runs once per suite per session.  Counts and durations of
every run are printed at the end of the session.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import pytest
from helpers.cpython import THIS_VERSION, engine_available, engine_env, find_cpython_test

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_suite.py")

#: The suites, and whether a sibling 3.11's copy may stand in (test_smtpd is
#: gone from 3.12+); the others must be this interpreter's version.
SUITES = {"test_ftplib": False, "test_poplib": False, "test_smtplib": False, "test_smtpd": True}

#: A test still running after this long is stuck: its suite's own socket
#: timeouts (support.LOOPBACK_TIMEOUT, 10 s) would have ended it long before.
TEST_TIMEOUT = 60.0
#: Bound on one suite's run on one backend, restarts after stuck tests included.
RUN_BUDGET = 600.0
#: After this many stuck tests the rest of the suite is not attempted.
MAX_STUCK = 5
#: Differing tests shown with their traceback; the rest are listed.
DETAILED = 6
#: Children running at once: they are mostly asleep, so a few overlap well
#: even on two cores.
WORKERS = 6

BACKENDS = {"oracle": None, "c": "cython", "py": "python"}
#: The runner's first line: which backend it really runs on.
HEADERS = ("chatcore engine:", "oracle:", "no oracle:")


def find_suite(suite: str) -> Optional[str]:
    return find_cpython_test(suite + ".py", ["3.11"] if SUITES[suite] else [THIS_VERSION])


def _smtpd_args(suite: str) -> list[str]:
    """3.11's test_smtpd imports `smtpd`, which 3.12+ keep only as a test-only copy."""
    if suite != "test_smtpd" or sys.version_info < (3, 12):
        return []
    return ["--smtpd-copy"]


class Run:
    """One suite's per-test outcomes on one backend, from the runner's JSON lines."""

    def __init__(self, suite: str, backend: str):
        self.suite = suite
        self.backend = backend
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.output = ""
        self.header = ""
        self.modules = ""
        self.seconds = 0.0
        self.complete = False
        self.problem = ""

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome, _ in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        text = ", ".join("%d %s" % (n, o) for o, n in sorted(counts.items()))
        return "%s [%s]: %s in %.1f s%s" % (
            self.suite,
            self.backend,
            text or "nothing",
            self.seconds,
            "" if self.complete else " (INCOMPLETE: %s)" % self.problem,
        )


#: Runner processes alive now, so an interrupted session can end them.
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
#: Set when the session ends: no new runner is started after that.
_closing = threading.Event()


def _kill(proc: subprocess.Popen) -> None:
    # The runner leads its own process group (anything a suite spawned is in it).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run_child(argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> str:
    """Run the runner; on timeout kill its whole process group. Returns its output."""
    with _children_lock:
        if _closing.is_set():
            return "[not started: the session is ending]\n"
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            start_new_session=True,
        )
        _children.add(proc)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _kill(proc)
        output, _ = proc.communicate()
        output += "\n[killed after %.0f s]\n" % timeout
    finally:
        with _children_lock:
            _children.discard(proc)
    return output


def _parse(path: str, run: Run) -> tuple[Optional[str], bool]:
    """Fold the results file into run.outcomes; return (test left unfinished, done)."""
    pending, done = None, False
    if not os.path.exists(path):
        return None, False
    with open(path) as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # the child died mid-write
            event = json.loads(line)
            if event["event"] == "start":
                pending = event["id"]
            elif event["event"] == "result":
                run.outcomes[event["id"]] = (event["outcome"], event["detail"])
                if event["id"] == pending:
                    pending = None
            elif event["event"] == "done":
                done = True
    return pending, done


def run_suite(path: str, suite: str, backend: str, workdir: str) -> Run:
    """Run one suite on one backend, resuming after any test that hangs or crashes."""
    run = Run(suite, backend)
    results = os.path.join(workdir, "results.jsonl")
    skip_file = os.path.join(workdir, "exclude.txt")
    argv = [
        sys.executable,
        RUNNER,
        "--backend",
        "oracle" if backend == "oracle" else "chatcore",
        "--results",
        results,
        "--test-timeout",
        str(TEST_TIMEOUT),
        "--exclude",
        skip_file,
    ]
    argv += _smtpd_args(suite) + [path]
    env = engine_env(backend)
    start = time.monotonic()
    stuck = 0
    while True:
        with open(skip_file, "w") as handle:
            handle.write("".join(i + "\n" for i in run.outcomes))
        remaining = RUN_BUDGET - (time.monotonic() - start)
        output = _run_child(argv, workdir, env, remaining)
        run.output += output
        if not run.header:
            lines = output.splitlines()
            run.header = next((line for line in lines if line.startswith(HEADERS)), "")
            run.modules = next((line for line in lines if line.startswith("modules:")), "")
        if run.header.startswith("no oracle:"):
            run.problem = run.header
            break
        pending, done = _parse(results, run)
        if done:
            run.complete = True
            break
        if _closing.is_set():
            run.problem = "the session ended first"
            break
        if pending is None:
            # Died outside any test: the suite did not load, or the budget ran out.
            run.problem = "the runner stopped outside a test"
            break
        # faulthandler's dump (a stuck test's "Timeout (...)!", a crash's
        # "Fatal Python error") starts the part worth showing.
        marks = [output.rfind(m) for m in ("Timeout (", "Fatal Python error", "[killed after")]
        kind = "crashed" if max(marks) == marks[1] and marks[1] >= 0 else "hung"
        run.outcomes[pending] = (kind, output[max(max(marks), 0) :][:4000])
        stuck += 1
        if time.monotonic() - start >= RUN_BUDGET:
            run.problem = "the run's %.0f s were used up; the rest was not run" % RUN_BUDGET
            break
        if stuck >= MAX_STUCK:
            run.problem = "%d tests hung or crashed; the rest was not run" % stuck
            break
    run.seconds = time.monotonic() - start
    return run


class LegacyRuns:
    """Starts the selected runs in the background and hands each out when ready."""

    def __init__(self, tmp_factory):
        self._tmp = tmp_factory
        self._pool = ThreadPoolExecutor(max_workers=WORKERS)
        self._futures = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.finished: list[Run] = []

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def submit(self, suite: str, backend: str, path: str):
        with self._lock:
            key = (suite, backend)
            if key not in self._futures:
                workdir = str(self._tmp.mktemp("%s-%s" % (suite, backend)))
                self._futures[key] = self._pool.submit(run_suite, path, suite, backend, workdir)
            return self._futures[key]

    def get(self, suite: str, backend: str, path: str) -> Run:
        run = self.submit(suite, backend, path).result()
        if run not in self.finished:
            self.finished.append(run)
        return run

    def close(self):
        """End the runs nobody waits for any more (an interrupted or failed session)."""
        for future in self._futures.values():
            future.cancel()
        with _children_lock:
            _closing.set()
            for proc in list(_children):
                _kill(proc)
        self._pool.shutdown(wait=True)


def _selected(session, module_file: str):
    """(suite, engine) pairs of this file's tests chosen for this session."""
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        path = getattr(item, "path", None) or item.fspath
        if callspec is not None and os.path.abspath(str(path)) == module_file:
            params = callspec.params
            if "suite" in params and "engine_id" in params:
                yield params["suite"], params["engine_id"]


@pytest.fixture(scope="session")
def legacy_runs(request, tmp_path_factory):
    runs = LegacyRuns(tmp_path_factory)
    # Longest suites first, so the pool's overlap pays off.
    order = list(SUITES)
    wanted = sorted(set(_selected(request.session, os.path.abspath(__file__))), key=lambda pair: order.index(pair[0]))
    for suite, engine_id in wanted:
        path = find_suite(suite)
        if path is not None and engine_available(engine_id):
            runs.submit(suite, "oracle", path)
            runs.submit(suite, engine_id, path)
    yield runs
    runs.close()
    # Per-run counts and durations, for CI logs: shown past output capture.
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and runs.finished:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("legacy server suites (python %s):" % sys.version.split()[0])
            for run in runs.finished:
                reporter.write_line("  " + run.summary())
            reporter.write_line(
                "  all runs: %.1f s of child time in %.1f s" % (sum(r.seconds for r in runs.finished), runs.elapsed())
            )


def _describe(ids, run: Run) -> str:
    """Each differing test's outcome, with its traceback (or thread dump) for the first few."""
    parts = []
    for n, test_id in enumerate(ids):
        outcome, detail = run.outcomes.get(test_id, ("not run", ""))
        parts.append("  %s: %s" % (test_id, outcome))
        if n < DETAILED and detail:
            shown = detail[:2500] if outcome in ("hung", "crashed") else detail[-1500:]
            parts.append("    " + shown.rstrip().replace("\n", "\n    "))
    return "\n".join(parts)


# A test waits for two runs (the oracle's and its own), each bounded by
# RUN_BUDGET, and may queue behind others for a worker: their bounds end a hang
# first, with each run's outcome kept.
@pytest.mark.timeout(3 * RUN_BUDGET)
@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("engine_id", ["c", "py"])
def test_legacy_suite_matches_oracle(suite, engine_id, legacy_runs):
    path = find_suite(suite)
    if path is None:
        pytest.skip(
            "CPython's %s.py not found (looked in this stdlib, $CHATCORE_CPYTHON_TESTS and "
            "sibling %s installs)" % (suite, "3.11" if SUITES[suite] else "same-version")
        )
    if not engine_available(engine_id):
        pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")

    oracle = legacy_runs.get(suite, "oracle", path)
    if oracle.header.startswith("no oracle:"):
        pytest.skip(oracle.header)
    assert oracle.complete, "the oracle run did not finish (%s):\n%s" % (oracle.problem, oracle.output[-6000:])
    assert oracle.header.startswith("oracle:"), oracle.output[:2000]
    assert "chatcore" not in oracle.modules, oracle.modules
    passed = sorted(i for i, (outcome, _) in oracle.outcomes.items() if outcome == "pass")
    assert passed, "the oracle passed no test:\n" + oracle.output[-6000:]

    mine = legacy_runs.get(suite, engine_id, path)
    assert mine.header == "chatcore engine: %s" % BACKENDS[engine_id], mine.output[:2000]
    used = mine.modules.split()[1:]
    assert used and all(u.split("=")[1].startswith("chatcore.compat.") for u in used), mine.modules
    differing = [i for i in passed if mine.outcomes.get(i, ("not run",))[0] != "pass"]
    if differing:
        pytest.fail(
            "%s on chatcore (%s engine): %d of the %d tests the oracle (%s) passes do "
            "not pass%s:\n%s"
            % (
                suite,
                engine_id,
                len(differing),
                len(passed),
                oracle.header[8:],
                "" if mine.complete else " (run incomplete: %s)" % mine.problem,
                _describe(differing, mine),
            ),
            pytrace=False,
        )
