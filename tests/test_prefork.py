"""chatcore.prefork(): forked workers on their own pollers, spread connections, restarts, signals.

Each test runs a server program in a child interpreter (``SERVER``): a
listener whose channels answer each line with the worker's pid and what its
epoll instance watches, served by ``prefork(2)``.  The parent prints the
exit statuses ``prefork()`` returned; every process is stopped and reaped
whatever the test's outcome.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers.engines import engine_id
from helpers.processes import CHILD_TIMEOUT, assert_process_gone, stop_server

import chatcore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not sys.platform.startswith("linux"), reason="Linux fork")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SERVER = """
import json, multiprocessing, os, signal, sys
import chatcore
from chatcore import eventloop

engine_name, start_method = sys.argv[1], sys.argv[2]
if start_method != "default":
    multiprocessing.set_start_method(start_method)
if engine_name == "c":
    from chatcore import _framing_c as engine
else:
    from chatcore import _framing_py as engine

channels = {}

def epoll_targets():
    # The descriptors this worker's epoll instance watches, as the kernel
    # lists them: shared with another process, it would list theirs too.
    (poller,) = eventloop._pollers.pollers_of(channels)
    with open("/proc/self/fdinfo/%d" % poller._epoll.fileno()) as info:
        return sorted(int(line.split()[1]) for line in info if line.startswith("tfd:"))

class Answer(chatcore.async_chat):
    _engine = engine
    def __init__(self, sock, map):
        super().__init__(sock, map=map)
        self.set_terminator(b"\\n")
    def collect_incoming_data(self, data):
        self.line = data
    def found_terminator(self):
        if self.line == b"close":
            chatcore.close_all(channels)
            return
        waker = eventloop._pollers.pollers_of(channels)[0].waker.fileno()
        report = {"pid": os.getpid(), "epoll": epoll_targets(), "mine": sorted([*channels, waker])}
        self.push(json.dumps(report).encode() + b"\\n")

class Listener(chatcore.dispatcher):
    def __init__(self):
        super().__init__(map=channels)
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(128)
    def handle_accepted(self, sock, addr):
        Answer(sock, channels)

listener = Listener()
# A turn in the parent first: it has an epoll instance of its own, which the
# workers inherit and must not use.
chatcore.loop(timeout=0, map=channels, count=1)
(parent_poller,) = eventloop._pollers.pollers_of(channels)
print("port", listener.socket.getsockname()[1], "epoll", parent_poller._epoll.fileno(), flush=True)
handlers = [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)]
statuses = chatcore.prefork(2, map=channels)
assert [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)] == handlers
print("returned", json.dumps(statuses), flush=True)
"""

#: A worker that fails as soon as it starts, every time: restarted, with a growing pause.
CRASHING = """
import logging, sys
import chatcore
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")

def serve():
    raise RuntimeError("this worker fails at once")

print("started", flush=True)
print("returned", chatcore.prefork(1, map={}, serve=serve), flush=True)
"""


class Server:
    """The server program running; ``ask()`` talks to it, ``workers()`` lists its children."""

    def __init__(self, engine: Any, start_method: str = "default"):
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(SERVER), engine_id(engine), start_method],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Every worker ever seen, killed on close even if the parent died first.
        self.seen: set[int] = set()
        try:
            line = self._read_line()
            assert line.startswith("port "), line
            self.port = int(line.split()[1])
            self.parent_epoll = int(line.split()[3])
        except BaseException:
            self.close()
            raise

    def _read_line(self, timeout: float = CHILD_TIMEOUT) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, "the server printed nothing in %s s" % timeout
        return self.process.stdout.readline().strip()

    def ask(self, line: bytes = b"who\n") -> Optional[dict[str, Any]]:
        """One connection, one line; the worker's answer (None if it closed without one)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=CHILD_TIMEOUT) as sock:
            sock.sendall(line)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
        return json.loads(data)

    def workers(self) -> set[int]:
        try:
            with open("/proc/%d/task/%d/children" % (self.process.pid, self.process.pid)) as children:
                workers = {int(pid) for pid in children.read().split()}
        except FileNotFoundError:
            return set()  # the parent has exited
        self.seen |= workers
        return workers

    def wait_for_workers(self, count: int, excluding: frozenset = frozenset()) -> set[int]:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while time.monotonic() < deadline:
            workers = self.workers() - excluding
            if len(workers) == count:
                return workers
            time.sleep(0.02)
        raise AssertionError("the server never had %d workers: %s" % (count, self.workers()))

    def returned(self) -> list[int]:
        """What prefork() returned in the parent (after the workers ended); the parent then exits."""
        line = self._read_line()
        assert line.startswith("returned "), line + self.stderr()
        assert self.process.wait(CHILD_TIMEOUT) == 0
        return json.loads(line.split(None, 1)[1])

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else ""

    def close(self) -> None:
        if self.process.poll() is None:
            # Stopped first, so that it cannot start a worker between the
            # look at its children and its end; killed before the workers,
            # so that it cannot replace them.
            self.process.send_signal(signal.SIGSTOP)
            self.workers()
            self.process.kill()
        # The workers hold the parent's output pipes: gone before reading them.
        for pid in self.seen:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
                    if b"chatcore.prefork(" in cmdline.read():  # still ours, not a reused pid
                        os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.process.communicate()
        assert_process_gone(self.process)


@pytest.fixture
def start_server(engine):
    servers: list[Server] = []

    def start(start_method: str = "default") -> Server:
        server = Server(engine, start_method)  # closes itself if it fails to start
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def answers_until(server: Server, wanted: set[int], limit: int = 400) -> list[dict[str, Any]]:
    """Connections, one after another, until every worker of *wanted* has answered one."""
    answers: list[dict[str, Any]] = []
    seen: set[int] = set()
    while not wanted <= seen:
        assert len(answers) < limit, "only %s answered of %s" % (seen, wanted)
        answer = server.ask()
        assert answer is not None
        answers.append(answer)
        seen.add(answer["pid"])
    return answers


def test_workers_spread_connections_each_on_an_epoll_of_its_own_and_sigterm_ends_them(start_server):
    server = start_server()
    workers = server.wait_for_workers(2)
    answers = answers_until(server, workers)
    answers += [server.ask() for _ in range(20)]
    assert {answer["pid"] for answer in answers} == workers  # the parent serves nothing
    for answer in answers:
        # Its own epoll: the listener, its waker and the connection, nothing of its sibling's.
        assert answer["epoll"] == answer["mine"]
    # While the workers serve connections, the parent's epoll instance (which
    # they inherited) still watches only what the parent registered: the
    # listener and its waker.
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=CHILD_TIMEOUT) for _ in range(6)]
    try:
        for sock in held:
            sock.sendall(b"who\n")
            assert sock.recv(4096)
        with open("/proc/%d/fdinfo/%d" % (server.process.pid, server.parent_epoll)) as info:
            assert sum(line.startswith("tfd:") for line in info) == 2
    finally:
        for sock in held:
            sock.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.returned() == [-signal.SIGTERM, -signal.SIGTERM]
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_killed_worker_is_replaced_and_sigint_ends_them(start_server):
    server = start_server()
    first = server.wait_for_workers(2)
    killed = min(first)
    os.kill(killed, signal.SIGKILL)
    replaced = server.wait_for_workers(2, excluding=frozenset({killed}))
    assert killed not in replaced
    (newcomer,) = replaced - first
    answers_until(server, {newcomer})
    server.process.send_signal(signal.SIGINT)
    assert server.returned() == [128 + signal.SIGINT, 128 + signal.SIGINT]
    assert "worker restarted" not in server.stderr()  # logging not configured: nothing printed


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_worker_whose_map_empties_exits_0_and_is_not_restarted(start_server, start_method):
    server = start_server(start_method)
    workers = server.wait_for_workers(2)
    done: set[int] = set()
    deadline = time.monotonic() + CHILD_TIMEOUT
    while done != workers:
        assert time.monotonic() < deadline
        for pid in list(workers - done):
            try:
                os.kill(pid, 0)
                with open("/proc/%d/stat" % pid) as stat:
                    if stat.read().split(") ", 1)[1].startswith("Z"):
                        done.add(pid)
                        continue
            except (ProcessLookupError, FileNotFoundError):
                done.add(pid)
        if done == workers:
            break
        try:
            server.ask(b"close\n")
        except OSError:
            pass  # the retired worker's socket was closed meanwhile
    assert server.returned() == [0, 0]


def test_a_failing_worker_is_logged_and_restarted_after_a_growing_pause():
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHING)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while sum("starting it again" in line for line in lines) < 3:
            ready, _, _ = select.select([process.stdout], [], [], CHILD_TIMEOUT)
            assert ready, "".join(lines)
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
        output, _ = stop_server(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert_process_gone(process)
    text = "".join(lines) + output
    restarts = [line for line in text.splitlines() if "starting it again" in line]
    # Died at once each time: 0.1 s, then twice as long each time.
    assert [line.rsplit(" in ", 1)[1] for line in restarts[:3]] == ["0.1 s", "0.2 s", "0.4 s"]
    assert "died (exit status 1)" in restarts[0]
    assert "RuntimeError: this worker fails at once" in text  # the worker's traceback, logged
    assert re.search(r"returned \[(1|-15)\]", text), text


def test_the_echo_example_serves_from_two_workers(engine):
    env = dict(os.environ)
    if engine_id(engine) == "py":
        env["CHATCORE_NO_EXTENSIONS"] = "1"
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--workers", "2", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, line
        port = int(line.split(":")[1].split()[0])
        assert process.stdout.readline().strip() == "serving from 2 worker processes"
        for number in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=CHILD_TIMEOUT) as sock:
                sock.sendall(b"line %d\n" % number)
                assert sock.makefile("rb").readline() == b"line %d\n" % number
        output, _ = stop_server(process, signal.SIGTERM)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert_process_gone(process)


def test_prefork_refuses_to_fork_with_other_threads_running():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="still-running")
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="still-running"):
            chatcore.prefork(2, map={})
    finally:
        release.set()
        thread.join()


def test_prefork_wants_at_least_one_worker():
    with pytest.raises(ValueError):
        chatcore.prefork(0, map={})


@pytest.mark.parametrize("mode", ["pipelined", "ping-pong"])
def test_the_benchmark_run_measures_both_workers_and_reaps_them(mode):
    from chatcore.benchmark.prefork import run_prefork_echo

    started = []
    result = run_prefork_echo("prefork-2", mode, 4, 20, on_server_started=started.append)
    assert result.messages == 4 * 20
    assert len(result.connections_per_worker) == 2 and sum(result.connections_per_worker) == 4
    assert result.server_cpu_us_per_line >= 0
    (process,) = started
    assert_process_gone(process.process)
