"""benchmarks/soak.py at a small size: it passes on the example server, and it notices a broken one.

Each test runs the soak script as a subprocess with a short load phase; the
soak starts the server under test, by default ``examples/echo_server.py``
(chatcore.demo's ``EchoHandler`` behind a line limit), in a subprocess of its
own.  Every run is bounded by the script's own deadlines and, should those
fail, by the subprocess timeout here.  The server's idle timeout is 3 s
(the shortest that leaves the well-behaved clients, which never go quiet for
half of it, their usual pauses), so the slowloris clients are closed within
the run.  The broken servers are the example with one thing changed, written
to a temporary file and passed as ``--server``: one corrupts an echo now and
then, one ignores the line limit, one has no idle timeout, one dies.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

import chatcore

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "benchmarks" / "soak.py"
EXAMPLE = ROOT / "examples" / "echo_server.py"
#: Far above a normal run (about 8 s): reached only when the script's own deadlines fail.
TIMEOUT = 180
IDLE_TIMEOUT = "3"

pytestmark = [
    pytest.mark.scenario,
    pytest.mark.skipif(
        not SOAK.exists() or not EXAMPLE.exists(), reason="benchmarks/ or examples/ not shipped with these tests"
    ),
    pytest.mark.timeout(TIMEOUT + 60),
]


def run_soak(extra: list[str], server: Optional[Path] = None) -> tuple[int, dict[str, Any], str]:
    command = [sys.executable, str(SOAK), "--json", "--progress", "0", "--idle-timeout", IDLE_TIMEOUT] + extra
    if server is not None:
        command += ["--server", str(server)]
    completed = subprocess.run(command, capture_output=True, timeout=TIMEOUT, cwd=str(ROOT))
    stderr = completed.stderr.decode("utf-8", "replace")
    assert completed.stdout, "no summary; stderr:\n" + stderr
    return completed.returncode, json.loads(completed.stdout), stderr


def broken_server(tmp_path: Path, patch: str) -> Path:
    """The example server with *patch* (Python source) run before its main().

    *patch* sees the example's ``EchoHandler`` (chatcore.demo's, which the
    example's line-limited handler subclasses) and ``sys``, ``os`` and
    ``threading``.
    """
    script = tmp_path / "broken_echo_server.py"
    script.write_text(
        "import os, runpy, sys, threading\n"
        "example = runpy.run_path(%r, run_name='soak_example')\n"
        "EchoHandler = example['EchoHandler']\n"
        "%s\n"
        "sys.exit(example['main']())\n" % (str(EXAMPLE), patch)
    )
    return script


def test_small_soak_passes_with_every_behaviour():
    returncode, summary, stderr = run_soak(["--connections", "40", "--seconds", "3", "--seed", "7"])
    assert summary["failures"] == [], stderr
    assert summary["verdict"] == "pass" and returncode == 0
    assert summary["wrong_echoes"] == 0
    assert summary["connections"]["opened"] >= 40
    assert summary["messages_verified"] > 0 and summary["bytes_verified"] > 0
    behaviours = summary["behaviours"]
    # Each behaviour happened, and ended the way it should.
    assert behaviours["echo"]["outcome: ok"] > 0
    assert behaviours["echo"]["messages"] > 0
    assert behaviours["slow"].get("outcome: ok", 0) + behaviours["slow"].get("outcome: ok, deep", 0) > 0
    assert behaviours["slow"]["messages"] > 0
    assert behaviours["reset"]["outcome: ok"] > 0
    # Every half-closed connection got its whole echo before the server closed it.
    assert behaviours["half-close"]["outcome: closed, all echoed"] > 0
    assert behaviours["garbage"]["outcome: ok"] > 0
    assert behaviours["idle"]["outcome: ok"] > 0
    # The hostile ones: the idle timeout closed the slowloris clients; the
    # never-readers could not make the server hold their echo (the RSS check).
    assert behaviours["slowloris"]["outcome: closed by the idle timeout"] > 0
    assert summary["server"]["idle_timeouts_logged"] > 0
    never_readers = [name for name in behaviours["never-reader"] if name.startswith("outcome: ")]
    assert never_readers and all(
        name.startswith(("outcome: left", "outcome: closed by the server", "outcome: ok, not started"))
        for name in never_readers
    )
    closed = behaviours["oversized"]["outcome: closed by the server"]
    assert closed > 0
    # And it was the line limit that closed them: one overflow logged each,
    # up to the rate limit of that message (the run is shorter than its interval).
    assert summary["server"]["overflows_logged"] == min(closed, chatcore.log.KINDS["message overflow"].burst)
    assert summary["server"]["uncaptured_exceptions"] == 0
    assert summary["server"]["exit_status"] == 0
    if sys.platform.startswith("linux"):
        rss = summary["rss"]
        assert rss["available"] and rss["start"] > 0 and rss["max"] >= rss["start"]
        # With descriptors for only 90% of the connections, the server ran out
        # of them, backed off and went on serving (the run passed).
        assert summary["server"]["descriptor_limit"] < summary["server"]["descriptors_at_start"] + 40
        assert summary["server"]["accept_backoffs_logged"] > 0


def test_soak_fails_on_a_wrong_echo(tmp_path):
    server = broken_server(
        tmp_path,
        (
            "pushes = [0]\n"
            "original_push = EchoHandler.push\n"
            "def push(self, data):\n"
            "    pushes[0] += 1\n"
            "    if pushes[0] % 200 == 0:\n"
            "        data = b'X' + bytes(data)\n"
            "    original_push(self, data)\n"
            "EchoHandler.push = push\n"
        ),
    )
    returncode, summary, _ = run_soak(["--connections", "20", "--seconds", "2"], server)
    assert returncode == 1 and summary["verdict"] == "fail"
    assert summary["wrong_echoes"] > 0
    assert any("wrong echo" in failure for failure in summary["failures"])


def test_soak_fails_when_oversized_lines_are_not_closed(tmp_path):
    # The server is told a limit far above what the soak's oversized lines reach.
    server = broken_server(tmp_path, ("index = sys.argv.index('--max-line')\nsys.argv[index + 1] = str(1 << 30)\n"))
    returncode, summary, _ = run_soak(
        ["--connections", "20", "--seconds", "2", "--close-timeout", "2", "--behaviours", "echo,oversized"], server
    )
    assert returncode == 1 and summary["verdict"] == "fail"
    assert any("did not close" in failure for failure in summary["failures"])


def test_soak_fails_when_idle_connections_are_not_closed(tmp_path):
    server = broken_server(tmp_path, "index = sys.argv.index('--idle-timeout')\nsys.argv[index + 1] = '0'\n")
    returncode, summary, _ = run_soak(
        [
            "--connections",
            "20",
            "--seconds",
            "1",
            "--close-timeout",
            "2",
            "--idle-timeout",
            "2",
            "--behaviours",
            "echo,slowloris",
        ],
        server,
    )
    assert returncode == 1 and summary["verdict"] == "fail"
    assert any("did not close it within" in failure for failure in summary["failures"])


def test_soak_fails_when_the_server_dies(tmp_path):
    server = broken_server(tmp_path, "threading.Timer(1.5, os._exit, (7,)).start()\n")
    returncode, summary, _ = run_soak(["--connections", "20", "--seconds", "3"], server)
    assert returncode == 1 and summary["verdict"] == "fail"
    assert any("server exited with status 7" in failure for failure in summary["failures"])
    assert summary["server"]["exit_status"] == 7
